"""The run database under concurrent openers: trainer, dashboard and tools at the same moment."""

from __future__ import annotations

import threading

from aquila.engine.rundb import RunDB


def test_many_openers_of_a_new_run_db(tmp_path):
    """Several connections open a fresh database at once (the trainer starting while the
    dashboard polls): none fails with "database is locked", every write lands."""
    errors: list[BaseException] = []
    for trial in range(10):
        run_dir = tmp_path / f"run{trial}"
        start = threading.Barrier(6)

        def open_and_write(i: int, run_dir=run_dir, start=start) -> None:
            try:
                start.wait()
                db = RunDB(run_dir)
                for step in range(5):
                    db.add_event(step, "probe", f"writer {i}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(RunDB(run_dir).events("probe")) == 30
