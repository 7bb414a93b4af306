"""Parse the dags/ folder as the DAG processor does and report what parsing touched (JSON on stdout)."""
import json
import sys
import time
from pathlib import Path

events: list[str] = []


def audit(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.getaddrinfo"):
        events.append(f"{event} {args[1:]!r}")
    elif event == "subprocess.Popen":
        events.append(f"{event} {args[1]!r}")


from airflow.dag_processing.dagbag import BundleDagBag  # noqa: E402
from airflow.sdk import Connection, Variable  # noqa: E402

lookups: list[str] = []
original_connection_get, original_variable_get = Connection.get, Variable.get


def connection_get(conn_id: str, *args: object, **kwargs: object) -> object:
    lookups.append(f"connection {conn_id}")
    return original_connection_get(conn_id, *args, **kwargs)


def variable_get(key: str, *args: object, **kwargs: object) -> object:
    lookups.append(f"variable {key}")
    return original_variable_get(key, *args, **kwargs)


Connection.get = staticmethod(connection_get)  # type: ignore[method-assign]
Variable.get = staticmethod(variable_get)  # type: ignore[method-assign]
before = set(sys.modules)
sys.addaudithook(audit)
folder = Path(sys.argv[1])
started = time.perf_counter()
bag = BundleDagBag(dag_folder=folder, bundle_path=folder, bundle_name="dags-folder")
elapsed = time.perf_counter() - started
print(json.dumps({
    "import_errors": bag.import_errors,
    "dag_ids": sorted(bag.dag_ids),
    "events": events,
    "lookups": lookups,
    "new_modules": sorted(m for m in set(sys.modules) - before if not m.startswith("unusual_prefix")),
    "seconds": elapsed,
}))
