"""Regenerate the committed Python stubs from grpc_predict_v2.proto.

    python -m edgecnn.protos.generate            # rewrite the stubs in protos/
    python -m edgecnn.protos.generate --check    # exit 1 if the committed stubs drifted

The proto is mapped to the import path ``edgecnn/protos`` so the generated
``*_pb2_grpc.py`` imports ``edgecnn.protos.grpc_predict_v2_pb2`` (not a top-level name).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO = "grpc_predict_v2.proto"
STUBS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc into ``out_dir`` and return the stub files by name."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-Iedgecnn/protos={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"edgecnn/protos/{PROTO}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / PROTO}")
    return {name: (out_dir / "edgecnn" / "protos" / name).read_bytes() for name in STUBS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    drifted = [n for n, data in fresh.items() if not (PROTO_DIR / n).exists() or (PROTO_DIR / n).read_bytes() != data]
    if args.check:
        if drifted:
            print(f"stubs out of date: {', '.join(drifted)}; run `python -m edgecnn.protos.generate`", file=sys.stderr)
            return 1
        print("stubs match protos/grpc_predict_v2.proto")
        return 0
    for name, data in fresh.items():
        (PROTO_DIR / name).write_bytes(data)
    print(f"wrote {', '.join(fresh)} to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
