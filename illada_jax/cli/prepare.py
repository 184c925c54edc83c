"""`illada prepare`: documents -> ArrayRecord token shards and a manifest."""

from __future__ import annotations

import argparse

from illada_jax.cli._common import (
    existing_path,
    int_at_least,
    number_in,
    output_dir,
    positive_int,
    tokenizer_path,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "prepare",
        help="raw text / jsonl / parquet / tfds / seqio / embedded -> token shards",
        description="Tokenise documents into ArrayRecord shards and a manifest. Example: illada "
        "prepare --format embedded --input train --output data/embedded. Or check a prepared "
        "dataset: illada prepare --verify data/embedded",
    )
    parser.add_argument(
        "--verify",
        type=existing_path("dir"),
        default=None,
        metavar="DIR",
        help="check every shard of the prepared dataset DIR against its manifest (sizes, "
        "CRC-32s, records, lengths); exit 2 if any is damaged. Takes no other argument",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        help="(required unless --verify) files or directories (text, jsonl, parquet); tfds: a prepared dataset by name, "
        "NAME[/CONFIG][:VERSION][:SPLIT] as in tfds.load (e.g. mnist:3.*.*:test, "
        "wiki/20230601.en:1.0.0:train[:10%%]; split default train), or its directory "
        "DIR[:SPLIT]; seqio: TASK_OR_MIXTURE[:SPLIT]; embedded: a split name",
    )
    parser.add_argument(
        "--format",
        choices=["text", "jsonl", "parquet", "tfds", "seqio", "embedded", "sft", "pref", "rl"],
        help="(required unless --verify) sft: chat dialogues (JSONL with messages or prompt/response, or `demo`) as "
        "iLLaDA-style SFT streams; pref: preference pairs (JSONL with prompt or messages, "
        "chosen, rejected, or `demo`) for objective=vrpo; rl: prompts with reference answers "
        "(JSONL with prompt, messages or question, and answer, or `demo`) for reward evaluation",
    )
    parser.add_argument(
        "--field",
        default="text",
        help="jsonl field / parquet column / tfds feature; seqio: a feature or a comma-separated "
        "list concatenated into one document (e.g. inputs,targets; default text, or targets when "
        "the task has no text); token ids in our tokenizer's vocabulary are used as ids, others "
        "re-tokenised from FEATURE_pretokenized",
    )
    parser.add_argument(
        "--tokenizer",
        type=tokenizer_path,
        default=None,
        help="SentencePiece .model or HF tokenizer.json (default: the shipped one)",
    )
    parser.add_argument(
        "--output", type=output_dir, help="output directory (required unless --verify)"
    )
    parser.add_argument(
        "--text-unit",
        default="file",
        choices=["file", "block"],
        help="text format: a document per file or per blank-line block",
    )
    parser.add_argument(
        "--max-doc-tokens",
        type=int_at_least(2),
        default=1 << 20,
        help="longer documents are split into records of this many tokens",
    )
    parser.add_argument(
        "--shard-chars",
        type=positive_int,
        default=None,
        help="characters of text per shard (default 16M; 1M for embedded)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="tokeniser processes (--runner beam on this machine: Beam worker processes)",
    )
    parser.add_argument("--seqio-module", default=None, help="module that registers the task")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data dir where tfds names are prepared (default $TFDS_DATA_DIR or "
        "~/tensorflow_datasets; nothing is downloaded); seqio: TFDS data dir of its tasks",
    )
    parser.add_argument(
        "--runner",
        default="local",
        choices=["local", "beam"],
        help="local: this machine's processes; beam: an Apache Beam pipeline ([beam] extra), "
        "locally on Beam's DirectRunner with --workers processes, on a cluster with the runner "
        "--beam-option names (docs/data.md)",
    )
    parser.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="OPT",
        help="a Beam pipeline option, passed through unchanged; repeatable; write it with '=' "
        "(--beam-option=--runner=DataflowRunner), since argparse takes a separate --runner=... "
        "for an option of its own",
    )
    parser.add_argument(
        "--heldout-fraction", type=number_in(0, 0.5, "0.05"), default=None, metavar="F",
        help="hold out a fraction F of the documents (chosen by a hash of each document, the "
        "same on every run) into OUTPUT-heldout, for train.eval_dataset; OUTPUT gets the rest",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from illada_jax.data.preparation.prepare import PrepareError, prepare, prepare_sft

    if args.verify:
        return _verify(args)
    missing = [f"--{name}" for name in ("input", "format", "output") if not getattr(args, name)]
    if missing:
        raise PrepareError(f"{', '.join(missing)} required (or --verify DIR alone)")
    if args.beam_option and args.runner != "beam":
        raise PrepareError("--beam-option needs --runner beam (or drop the Beam options)")
    if args.format in ("pref", "rl"):
        return _prepare_post_training(args)
    if args.heldout_fraction is not None and (args.format == "sft" or args.runner == "beam"):
        raise PrepareError("--heldout-fraction works with the local runner and document formats: "
                           "drop it, or split the input files yourself")  # fmt: skip
    if args.format == "sft":
        if args.runner == "beam":
            raise PrepareError("--format sft runs on this machine only: drop --runner beam")
        if len(args.input) != 1:
            raise PrepareError("--format sft takes one --input: a JSONL file of dialogues or demo")
        manifest = prepare_sft(args.input[0], args.output, tokenizer_path=args.tokenizer)
    else:
        common = dict(
            tokenizer_path=args.tokenizer,
            field=args.field,
            text_unit=args.text_unit,
            seqio_module=args.seqio_module,
            data_dir=args.data_dir,
            shard_chars=args.shard_chars,
            max_doc_tokens=args.max_doc_tokens,
            workers=args.workers,
            progress=not args.quiet,
        )
        if args.runner == "beam":
            from illada_jax.data.preparation.beam_prepare import prepare_beam

            manifest = prepare_beam(
                args.input, args.format, args.output, beam_options=args.beam_option, **common
            )
        elif args.heldout_fraction is not None:
            # The held-out part first: on a small input it is the one that can come out empty.
            parts = {"heldout": f"{args.output.rstrip('/')}-heldout", "train": args.output}
            for part, output in parts.items():
                manifest = prepare(args.input, args.format, output,
                                   split=(part, args.heldout_fraction), **common)  # fmt: skip
                _report(manifest, output)
            return 0
        else:
            manifest = prepare(args.input, args.format, args.output, **common)
    _report(manifest, args.output)
    return 0


def _prepare_post_training(args: argparse.Namespace) -> int:
    from illada_jax.data.preparation.post_training import prepare_pref, prepare_rl
    from illada_jax.data.preparation.prepare import PrepareError

    what = {"pref": "a JSONL file of preference pairs", "rl": "a JSONL file of RL prompts"}
    if args.runner == "beam" or len(args.input) != 1:
        raise PrepareError(f"--format {args.format} takes one --input ({what[args.format]}, or "
                           "demo) and runs on this machine: drop --runner beam")  # fmt: skip
    prepare = prepare_pref if args.format == "pref" else prepare_rl
    manifests = prepare(args.input[0], args.output, tokenizer_path=args.tokenizer,
                        heldout_fraction=args.heldout_fraction)  # fmt: skip
    for output, manifest in manifests.items():
        count = (f"{manifest['pairs']} preference pairs" if args.format == "pref"
                 else f"{manifest['prompts']} RL prompts")  # fmt: skip
        print(f"prepared {count}, {manifest['tokens']} tokens -> {output}")
        print(f"bad records: {manifest['bad_records'] or 'none'}")
        for example in manifest["bad_examples"][:3]:
            print(f"  {example}")
    return 0


def _report(manifest: dict, output: str) -> None:
    bad = {k: v for k, v in manifest["bad_records"].items() if v}
    print(
        f"prepared {manifest['documents']} documents, {manifest['tokens']} tokens in "
        f"{manifest['shards']['count']} shards -> {output}"
    )
    print(f"bad records: {bad or 'none'}")


def _verify(args: argparse.Namespace) -> int:
    from illada_jax.data.preparation.prepare import PrepareError
    from illada_jax.data.preparation.verify import verify_dataset

    given = [f"--{name.replace('_', '-')}" for name in ("input", "format", "output", "tokenizer")
             if getattr(args, name)]  # fmt: skip
    if given:
        raise PrepareError(f"--verify takes no other argument; drop {', '.join(given)}")
    report = verify_dataset(args.verify, progress=not args.quiet)
    checked = "sizes, CRC-32s, records and lengths" if report.checksums else (
        "records and lengths (no checksums: the manifest predates them; re-prepare to add them)"
    )  # fmt: skip
    if report.damaged:
        raise PrepareError(
            f"{args.verify}: {len(report.damaged)} of {report.shards} shards damaged: "
            + "; ".join(report.damaged[:5])
            + (" ..." if len(report.damaged) > 5 else "")
            + ". Delete those shards' files (shard-NNNNN.*) and re-run the illada prepare "
            "command that made the dataset: it writes missing shards again"
        )
    print(f"{args.verify}: {report.shards} shards, {report.tokens} tokens: OK ({checked})")
    return 0
