#!/usr/bin/env python3
"""Ask a recsys gateway for recommendations from Python.

    python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools
    .venv/bin/python examples/python/recommend.py --gateway 127.0.0.1:50051 --user-id user-0

The stubs are generated from proto/ at start-up (grpc_tools), so nothing generated
is committed and the client always matches the protos of this checkout.
"""
import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    out = tempfile.mkdtemp(prefix="recsys-stubs-")
    protos = [str(p.relative_to(PROTO_ROOT)) for p in sorted((PROTO_ROOT / "recsys" / "v1").glob("*.proto"))]
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        sys.exit(f"protoc failed on {protos}")
    sys.path.insert(0, out)
    return importlib.import_module("recsys.v1.gateway_pb2"), importlib.import_module("recsys.v1.gateway_pb2_grpc")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="127.0.0.1:50051")
    parser.add_argument("--user-id")
    parser.add_argument("--vector", help="comma-separated query embedding")
    parser.add_argument("--similar-to", type=int, help="items like this item id")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--include-seen", action="store_true", help="also return items the user already has")
    parser.add_argument("--session", action="store_true", help="start a session (prints its token)")
    parser.add_argument("--session-token", help="continue the session with this token (hex)")
    parser.add_argument("--next-page", action="store_true", help="with --session-token: the next page")
    parser.add_argument("--max-per-value", help="ATTRIBUTE=N: at most N items of one value (e.g. genre=2)")
    parser.add_argument(
        "--mmr-lambda",
        type=float,
        help="maximal marginal relevance on the item vectors: 1 keeps the ranking order, lower spreads the answer",
    )
    parser.add_argument(
        "--filter",
        help='only items whose attributes match, e.g. \'genre in ["Comedy", "Drama"] and year >= 1990\'',
    )
    parser.add_argument(
        "--genre",
        action="append",
        help="only items of this genre (repeatable): the same filter built as a structured message",
    )
    args = parser.parse_args()
    pb, rpc = load_stubs()

    request = pb.RecommendRequest(
        k=args.k, options=pb.RecommendOptions(exact=args.exact, include_seen=args.include_seen)
    )
    if args.similar_to is not None:
        request.similar_to_item_id = args.similar_to
    if args.max_per_value:
        attribute, _, count = args.max_per_value.partition("=")
        request.diversity.attribute = attribute
        request.diversity.max_per_value = int(count)
    if args.mmr_lambda is not None:
        request.diversity.mmr_lambda = args.mmr_lambda
    if args.filter:
        request.filter_expression = args.filter
    if args.genre:
        # The structured form: genre in [...], as messages rather than text.
        request.filter.any_of.attribute = "genre"
        for genre in args.genre:
            request.filter.any_of.values.add(keyword=genre)
    if args.session or args.session_token:
        request.session.token = bytes.fromhex(args.session_token or "")
        request.session.mode = pb.SESSION_MODE_NEXT_PAGE if args.next_page else pb.SESSION_MODE_MERGE
    if args.user_id:
        request.user_id = args.user_id
    elif args.vector:
        request.query_embedding.values.extend(float(v) for v in args.vector.split(","))
    elif args.similar_to is None:
        sys.exit("give --user-id, --vector or --similar-to")

    with grpc.insecure_channel(args.gateway) as channel:
        try:
            response = rpc.GatewayServiceStub(channel).Recommend(request, timeout=2.0)
        except grpc.RpcError as error:
            sys.exit(f"{error.code().name}: {error.details()}")
    if response.ranked:
        print(f"ranked by {response.model_version} (bundle {response.bundle_version})")
    else:
        print(f"in retrieval order (bundle {response.bundle_version})")
    print(f"{'rank':>4}  {'item':>10}  {'ranking':>8}  {'retrieval':>9}  {'(rank)':>6}  name")
    for rank, item in enumerate(response.items, start=1):
        ranking = f"{item.ranking_score:>8.4f}" if item.HasField("ranking_score") else f"{'-':>8}"
        retrieval_rank = "shown" if item.from_session else item.retrieval_rank + 1
        print(
            f"{rank:>4}  {item.item_id:>10}  {ranking}  {item.retrieval_score:>9.4f}"
            f"  {retrieval_rank:>6}  {item.name}"
        )
    c = response.coverage
    print(f"coverage {c.shards_answered}/{c.shards_asked} shards, degraded={c.degraded}")
    if response.seen_excluded:
        print(f"{response.seen_excluded} items the user already has left out (--include-seen to keep them)")
    if response.diversity_note:
        print(f"diversity: {response.diversity_note}")
    if response.session_token:
        note = response.session_note or "merged"
        print(f"session ({note}; {len(response.session_token)} bytes): --session-token {response.session_token.hex()}")


if __name__ == "__main__":
    main()
