"""``esdistill es start|stop|status``: the local Elasticsearch node."""

from __future__ import annotations

import argparse
import json

from esdistill.deploy.es_local import ELASTIC_USER, ES_VERSION, PASSWORD_ENV, LocalElasticsearch

__all__ = ["register"]


def _node(args: argparse.Namespace) -> LocalElasticsearch:
    return LocalElasticsearch(port=args.port, version=args.version, data=args.data, heap=args.heap,
                              security=args.secure)


def _start(args: argparse.Namespace) -> int:
    node = _node(args)
    url = node.start(timeout=args.timeout)
    st = node.status()
    print(f"Elasticsearch {st.version} is {st.health} at {url} (pid {st.pid}, folder {st.home})"
          + (" with TLS and a password" if st.secure else ""))
    if st.health == "yellow":
        print("  yellow: some index asks for replicas, which one node cannot hold; it serves all the same "
              "(set index.number_of_replicas to 0 for green)")
    print(f"  export ESDISTILL_ES_URL={url}")
    if st.secure:
        # where the secrets are, never the secrets themselves
        print(f"  export ESDISTILL_ES_USER={ELASTIC_USER}")
        print(f"  export ESDISTILL_ES_PASSWORD_FILE={st.password_file}")
        print(f"  export ESDISTILL_ES_CA_CERTS={st.ca_cert}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = _node(args).stop()
    print("stopped" if stopped else f"no esdistill Elasticsearch was running on port {args.port}")
    return 0


def _status(args: argparse.Namespace) -> int:
    st = _node(args).status()
    if args.json:
        print(json.dumps(st.to_dict()))
    elif st.running:
        print(f"running: Elasticsearch {st.version}, health {st.health}, {st.url}, pid {st.pid}")
    else:
        print(f"not running on {st.url}")
    return 0 if st.running else 1


def register(sub: argparse._SubParsersAction) -> None:
    es = sub.add_parser("es", help="run a local single-node Elasticsearch (no Docker)")
    es_sub = es.add_subparsers(dest="es_cmd", required=True)
    for name, fn, helptext in (
        ("start", _start, "fetch (once) and start a node; a no-op when it already runs"),
        ("stop", _stop, "stop the node this tool started"),
        ("status", _status, "show whether the node runs and its health (exit 1 when not)"),
    ):
        p = es_sub.add_parser(name, help=helptext)
        p.add_argument("--port", type=int, default=9200, help="HTTP port (default 9200)")
        p.add_argument("--version", default=ES_VERSION, help=f"Elasticsearch version (default {ES_VERSION})")
        p.add_argument("--data", default=None, help="node folder (default: <ESDISTILL_HOME>/nodes/<port>)")
        p.add_argument("--heap", default="1g", help="JVM heap, e.g. 512m or 1g (default 1g)")
        p.add_argument("--secure", action="store_true",
                       help="x-pack security on: HTTPS with a CA of the node's own and a password for the "
                            f"'{ELASTIC_USER}' user (from {PASSWORD_ENV}, else generated and written to a "
                            "0600 file in the node folder)")
        if name == "start":
            p.add_argument("--timeout", type=float, default=180.0,
                           help="seconds to wait until the node serves (health yellow or green; a node that "
                                "answers is never killed)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=fn)
