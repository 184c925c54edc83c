"""Where documents come from: each input format's reader and the bad-record rules."""
