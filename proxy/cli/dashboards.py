"""``quotagate dashboards``: the dashboards and alerts on one machine, without Docker.

Writes into one directory a Prometheus config that scrapes the local gateway(s) and loads the shipped
alert rules, and a Grafana provisioning directory (the Prometheus datasource and the three dashboards);
then prints the two commands to run. ``dashboards/prometheus.yml`` (for docker compose) is left as it is.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import yaml

from .common import fail

REPO_DASHBOARDS = Path(__file__).resolve().parent.parent.parent / "dashboards"


def cmd_dashboards(args: argparse.Namespace) -> int:
    src = Path(args.source)
    if not (src / "alerts.yml").is_file():
        fail(f"no dashboards in {src} (expected alerts.yml and *.json): give --source DIR", code=2)
    targets: list[str] = args.target or ["127.0.0.1:8080"]
    out = Path(args.out).resolve()
    board_dir = out / "grafana" / "dashboards"
    prov = out / "grafana" / "provisioning"
    boards = _copy(src, out, board_dir, prov)
    prom_url = f"http://127.0.0.1:{args.prometheus_port}"
    header = "# written by `quotagate dashboards`\n"
    written = {
        out / "prometheus.yml": _prometheus(out, targets, args.prometheus_port),
        prov / "datasources" / "quotagate.yml": _datasource(prom_url),
        prov / "dashboards" / "quotagate.yml": _provider(board_dir),
    }
    for path, config in written.items():
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {out}/prometheus.yml (scrapes {', '.join(targets)}; alert rules {out}/alerts.yml)")
    print(f"wrote {prov}/ (datasource {prom_url}; {len(boards)} dashboards in {board_dir})")
    print("run:")
    print(
        f"  prometheus --config.file={out}/prometheus.yml --storage.tsdb.path={out}/prometheus-data "
        f"--web.listen-address=127.0.0.1:{args.prometheus_port}"
    )
    print(f"  GF_PATHS_PROVISIONING={prov} grafana-server --homepath /usr/share/grafana   # then http://127.0.0.1:3000")
    return 0


def _copy(src: Path, out: Path, board_dir: Path, prov: Path) -> list[Path]:
    """Make the directories and copy in the alert rules and the dashboards (returned)."""
    for d in (board_dir, prov / "datasources", prov / "dashboards"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "alerts.yml", out / "alerts.yml")
    boards = sorted(src.glob("*.json"))
    for board in boards:
        shutil.copyfile(board, board_dir / board.name)
    return boards


def _prometheus(out: Path, targets: list[str], port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(out / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "quotagate", "metrics_path": "/metrics", "static_configs": [{"targets": targets}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
    }


def _datasource(prom_url: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": "prometheus",  # what the dashboards' datasource variable defaults to
                "access": "proxy",
                "url": prom_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            }
        ],
    }


def _provider(board_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "quotagate",
                "orgId": 1,
                "folder": "quotagate",
                "folderUid": "quotagate",
                "type": "file",
                "options": {"path": str(board_dir), "foldersFromFilesStructure": False},
            }
        ],
    }


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "dashboards",
        help="write a Prometheus config and Grafana provisioning for a gateway on this machine (no Docker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--out", default="quotagate-dashboards", metavar="DIR", help="directory to write into (default: %(default)s)"
    )
    d.add_argument(
        "--target",
        action="append",
        metavar="HOST:PORT",
        help="a gateway to scrape; repeat for several (default: 127.0.0.1:8080)",
    )
    d.add_argument(
        "--prometheus-port", type=int, default=9090, help="port Prometheus listens on (default: %(default)s)"
    )
    d.add_argument(
        "--source",
        default=str(REPO_DASHBOARDS),
        metavar="DIR",
        help="the repository's dashboards/ folder (default: %(default)s)",
    )
    d.set_defaults(fn=cmd_dashboards)
