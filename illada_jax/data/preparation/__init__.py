"""`illada prepare`: documents into ArrayRecord shards and a manifest (locally or on Beam)."""
