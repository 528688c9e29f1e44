#!/usr/bin/env python
"""Regenerate the shipped data files in data/ from the corpus generator (deterministic in --seed).

    python scripts/make_data.py            # rewrites data/*.jsonl exactly as shipped
"""

from pathlib import Path

from classic_rl.infra.cli import cli, script_parser
from rlhf_toy import corpus
from rlhf_toy.data import DATA_DIR, write_jsonl


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0, help="Generator seed (0 gives the shipped files)")
    parser.add_argument("--out", default=str(DATA_DIR), help="Output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in corpus.generate_corpus(args.seed).items():
        write_jsonl(out / f"{name}.jsonl", rows)
        print(f"{out / name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
