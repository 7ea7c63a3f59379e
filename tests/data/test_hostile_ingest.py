"""Hostile input to ingest, the config and the dataset writer (TARGETS R2, R3; issue 11).

Every case makes its own hostile files. Each must end in a clear one-line error or a
per-file refusal with a reason, with memory bounded (checked in a child process under
``RLIMIT_AS``, never with a wall-time assertion), nothing written outside the target and
nothing deleted that LineGuard did not make.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.config import ConfigError, IngestConfig, load_config
from lineguard.escaping import code_span, escape_html, escape_markdown, terminal_text
from lineguard.ingest import IngestError, ingest
from lineguard.manifest import DatasetError, load_dataset

CFG = IngestConfig(workers=0)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _png(level: int, size: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed * 1000 + level)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root: Path, n: int = 4) -> Path:
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{i}.png").write_bytes(_png(i, seed=0 if label == "good" else 1))
    return root


def _reasons(report) -> dict[str, str]:
    return {r["source_path"]: r["reason"] for r in report.rejected}


def _bounded(code: str, extra_mb: int, cwd: Path) -> dict:
    """Run ``code`` in a child whose address space may grow at most ``extra_mb`` past its start.

    The child imports what ingest needs first, then sets ``RLIMIT_AS`` to its current size
    plus ``extra_mb``, so the bound is the same on any machine whatever pyarrow reserves.
    It prints a JSON line with the result and its peak resident memory.
    """
    script = textwrap.dedent('''
        import json, resource, sys
        import numpy, pandas, pyarrow, PIL.Image
        import lineguard.ingest, lineguard.config, lineguard.manifest
        def vm(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + EXTRA * 2**20, resource.RLIM_INFINITY))
        out = {}
        try:
        CODE
        except MemoryError:
            out["error"] = "MemoryError"
        except Exception as exc:
            out["error"] = type(exc).__name__ + ": " + str(exc)
        out["hwm_mb"] = vm("VmHWM") / 2**20
        print("RESULT " + json.dumps(out))
    ''').replace("EXTRA", str(extra_mb)).replace("CODE", textwrap.indent(textwrap.dedent(code), "    "))
    env = {**os.environ, "PYTHONPATH": SRC, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# --- bounded reads -------------------------------------------------------------------------------


def test_sparse_3gb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    with open(src / "good" / "huge.png", "wb") as f:
        f.truncate(3_000_000_000)  # sparse: costs no disk, would cost 3 GB of memory if read
    res = _bounded(f'''
        from lineguard.ingest import ingest
        from lineguard.config import IngestConfig
        r = ingest({str(src)!r}, {str(tmp_path / "ds")!r}, IngestConfig(workers=0))
        out["reasons"] = {{x["source_path"]: x["reason"] for x in r.rejected}}
        out["images"] = r.images
    ''', 400, tmp_path)
    assert "error" not in res, res
    assert res["reasons"] == {"good/huge.png": "file_too_large"} and res["images"] == 8
    assert res["hwm_mb"] < 600


def _zip_bomb(path: Path, member_mb: int, members: int = 1) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(members):
            zf.writestr(f"good/bomb{i}.png", b"\0" * (member_mb << 20))


def test_zip_bombs_stay_within_the_memory_and_decompression_budget(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    _zip_bomb(src / "a.zip", 120, members=3)  # ~360 MB unpacked from ~350 KB
    _zip_bomb(src / "b.zip", 120, members=3)
    res = _bounded(f'''
        from lineguard.ingest import ingest
        from lineguard.config import IngestConfig
        cfg = IngestConfig(workers=0, max_file_bytes=50_000_000, max_unpacked_bytes=200_000_000)
        r = ingest({str(src)!r}, {str(tmp_path / "ds")!r}, cfg)
        out["reasons"] = sorted({{x["source_path"]: x["reason"] for x in r.rejected}}.items())
        out["images"] = r.images
    ''', 400, tmp_path)
    assert "error" not in res, res
    reasons = dict(res["reasons"])
    assert {reasons[f"{z}/good/bomb{i}.png"] for z in ("a.zip", "b.zip") for i in range(3)} == {"file_too_large"}
    assert res["images"] == 8 and res["hwm_mb"] < 600


def test_decompression_budget_is_shared_by_every_archive_of_a_source(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(src / name, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("good/zeros.bin", b"\0" * 3_000_000)
    report = ingest(str(src), str(tmp_path / "ds"), IngestConfig(workers=0, max_unpacked_bytes=4_000_000))
    reasons = _reasons(report)
    assert reasons["a.zip/good/zeros.bin"] == "not_an_image"  # unpacked: within the budget
    assert reasons["b.zip/good/zeros.bin"] == "decompression_budget"  # the budget is spent


def test_many_empty_tar_members_are_capped_with_flat_memory(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    with tarfile.open(src / "many.tar", "w") as tf:
        for i in range(30_000):
            info = tarfile.TarInfo(f"good/e{i}.png")
            info.size = 0
            tf.addfile(info, io.BytesIO(b""))
    res = _bounded(f'''
        from lineguard.ingest import ingest
        from lineguard.config import IngestConfig
        r = ingest({str(src)!r}, {str(tmp_path / "ds")!r}, IngestConfig(workers=0, max_archive_members=2_000))
        out["reasons"] = [x["reason"] for x in r.rejected if x["source_path"] == "many.tar"]
        out["rejected"] = len(r.rejected)
    ''', 400, tmp_path)
    assert "error" not in res, res
    assert res["reasons"] == ["too_many_members"] and res["rejected"] == 2_001  # 2,000 empty files + the cap
    assert res["hwm_mb"] < 600


@pytest.mark.timeout(120)
def test_a_source_that_is_dev_zero_or_a_fifo_is_refused_unread(tmp_path: Path) -> None:
    for name in ("zero.zip", "zero.csv", "zero.json"):
        (tmp_path / name).symlink_to("/dev/zero")
        with pytest.raises(IngestError, match="not a regular file"):
            ingest(str(tmp_path / name), str(tmp_path / "ds"), CFG)
    os.mkfifo(tmp_path / "pipe.tar")
    with pytest.raises(IngestError, match="not a regular file"):
        ingest(str(tmp_path / "pipe.tar"), str(tmp_path / "ds"), CFG)
    # Inside a folder source: a FIFO and a link to a device are refused per file, the rest goes on.
    src = _tree(tmp_path / "src")
    os.mkfifo(src / "good" / "pipe.png")
    (src / "good" / "labels.csv").symlink_to("/dev/zero")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _reasons(report)
    assert reasons["good/pipe.png"] == "not_a_file"
    assert reasons["good/labels.csv"] == "symlink_outside_source"
    assert report.images == 8


def test_bad_csv_tables_are_refused_per_table(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    (src / "nul.csv").write_bytes(b"file,label\ngood/0.png,good\x00\n" + b"x" * 10)
    (src / "huge_field.csv").write_bytes(b"file,label\n\"" + b"a" * 200_000 + b"\",good\n")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _reasons(report)
    assert reasons["huge_field.csv"] == "bad_csv"
    assert report.images == 8


# --- decoders, names, archives -------------------------------------------------------------------


def test_formats_outside_the_allow_list_and_decoder_crashes_are_bad_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import PngImagePlugin

    src = _tree(tmp_path / "src")
    (src / "good" / "drawing.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="ICO")
    (src / "good" / "icon.ico").write_bytes(buf.getvalue())
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _reasons(report)
    assert reasons["good/drawing.eps"] == "not_an_image" and reasons["good/icon.ico"] == "not_an_image"

    def explode(self: object) -> None:
        raise KeyError("a decoder bug")

    from lineguard.preprocess import ImageDecodeError, decode_image

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", explode)
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(_png(1))
    assert exc.value.reason == "corrupt" and "KeyError" in str(exc.value)


def test_non_utf8_file_names_are_kept_escaped(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    raw = os.path.join(os.fsencode(src / "good"), b"caf\xe9-\xff.png")
    with open(raw, "wb") as f:
        f.write(_png(9, seed=5))
    with open(os.path.join(os.fsencode(src / "good"), b"\xfe-notes.png"), "wb") as f:
        f.write(b"not an image")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    ds = load_dataset(str(tmp_path / "ds"))
    assert "good/caf\\xe9-\\xff.png" in set(ds.manifest["source_path"])
    assert report.images == 9
    assert _reasons(report)["good/\\xfe-notes.png"] == "not_an_image"
    assert "good/\\xfe-notes.png" in (tmp_path / "ds" / "report.md").read_text(encoding="utf-8")


def _encrypted_zip(path: Path, members: dict[str, bytes], encrypted: set[str]) -> None:
    """A zip whose chosen members carry the 'encrypted' flag (the stdlib cannot write real ZipCrypto)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        infos = zf.infolist()
    for info in infos:
        if info.filename in encrypted:
            raw[info.header_offset + 6] |= 0x1  # local header flag bits
    cd = raw.find(b"PK\x01\x02")
    while cd != -1:
        name_len = int.from_bytes(raw[cd + 28 : cd + 30], "little")
        name = bytes(raw[cd + 46 : cd + 46 + name_len]).decode()
        if name in encrypted:
            raw[cd + 8] |= 0x1  # central directory flag bits
        cd = raw.find(b"PK\x01\x02", cd + 4)
    path.write_bytes(bytes(raw))


def test_encrypted_and_corrupt_zip_members_are_refused_per_member(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    _encrypted_zip(src / "photos.zip", {"good/a.png": _png(20), "good/secret.png": _png(21)}, {"good/secret.png"})
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    reasons = _reasons(report)
    assert reasons["photos.zip/good/secret.png"] == "encrypted"
    assert report.images == 9  # the plain member is in


def test_deep_or_huge_label_studio_exports_are_one_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IngestError, match="deeper than 64"):
        ingest(str(deep), str(tmp_path / "ds"), CFG)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps([{"data": {"image": "a.png"}, "annotations": [{"result": [[[[[[[[[[[[]]]]]]]]]]]]}]}]))
    with pytest.raises(IngestError, match="deeper than 8"):
        ingest(str(nested), str(tmp_path / "ds"), CFG.model_copy(update={"max_json_depth": 8}))
    big = tmp_path / "big.json"
    big.write_text("[" + ",".join(["{}"] * 1000) + "]")
    with pytest.raises(IngestError, match="max_table_bytes"):
        ingest(str(big), str(tmp_path / "ds"), CFG.model_copy(update={"max_table_bytes": 1000}))
    assert not (tmp_path / "ds").exists()


def test_label_studio_tasks_of_the_wrong_shape_are_problems_not_crashes(tmp_path: Path) -> None:
    from lineguard.labelstudio import parse_export

    tasks = [
        {"id": 1, "data": {"image": 5}, "annotations": 7},
        {"id": 2, "data": "x", "annotations": [{"result": {"value": 1}}]},
        {"id": 3, "data": {"image": ["a"]}, "annotations": [{"result": [{"value": {"choices": [{"x": 1}]}}]}]},
        {"id": 4, "data": {"image": "/data/local-files/?d=../../etc/passwd"},
         "annotations": [{"result": [{"from_name": "label", "value": {"choices": ["good"]}}]}]},
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    parsed = parse_export(str(tmp_path / "export.json"), str(tmp_path))
    assert not parsed.records
    assert {p.task_id for p in parsed.problems} == {"1", "2", "3", "4"}


# --- config ---------------------------------------------------------------------------------------


def test_billion_laughs_yaml_is_refused_fast_and_small(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("train: {lr: *i}")
    (tmp_path / "lol.yaml").write_text("\n".join(lines) + "\n")
    assert len((tmp_path / "lol.yaml").read_bytes()) < 1000
    res = _bounded(f'''
        from lineguard.config import load_config, ConfigError
        try:
            load_config({str(tmp_path / "lol.yaml")!r})
        except ConfigError as exc:
            out["message"] = str(exc)
    ''', 200, tmp_path)
    assert "expands to more than" in res["message"] and len(res["message"]) < 300
    assert res["hwm_mb"] < 400
    # A large value that is not aliased is still shown short in the error.
    (tmp_path / "wide.yaml").write_text("train:\n  lr: [" + ",".join(["1"] * 5000) + "]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "wide.yaml")
    assert len(str(exc.value)) < 300
    (tmp_path / "big.yaml").write_text("# pad\n" * 300_000)
    with pytest.raises(ConfigError, match="at most"):
        load_config(tmp_path / "big.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ingest.split={train: .nan, val: 0.1, test: 0.1}", "ingest.split.train' input should be a finite number"),
        ("train.lr=inf", "train.lr' input should be a finite number"),
        ("train.lr=.inf", "train.lr' input should be a finite number"),
        ("train.epochs=true", "train.epochs' expects a number, not a boolean"),
        ("augment.hflip=false", "augment.hflip' expects a number, not a boolean"),
        ("preprocess.size=[true, 96]", "preprocess.size' expects a number, not a boolean"),
        ("compress.threads=[1, true]", "compress.threads' expects a number, not a boolean"),
        ("evaluate.cost.missed_defect=-.inf", "missed_defect' input should be a finite number"),
        ("tune.lr=[.nan, 0.1]", "tune.lr.0' input should be a finite number"),
    ],
)
def test_nan_inf_and_booleans_are_not_numbers(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_booleans_stay_booleans_and_optional_numbers_take_null() -> None:
    cfg = load_config(None, ["train.deterministic=false", "train.max_minutes=null", "ingest.balance_test=false"])
    assert cfg.train.deterministic is False and cfg.train.max_minutes is None


# --- --overwrite, leftovers, orphans ---------------------------------------------------------------


def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "holiday.jpg").write_bytes(b"precious")
    (photos / "sub" / "more.txt").write_bytes(b"precious too")
    with pytest.raises(DatasetError, match="not a LineGuard dataset"):
        ingest(str(src), str(photos), CFG, overwrite=True)
    assert (photos / "holiday.jpg").read_bytes() == b"precious" and (photos / "sub" / "more.txt").exists()
    # A dataset a user put their own file into is not replaced either.
    ds = tmp_path / "ds"
    ingest(str(src), str(ds), CFG)
    (ds / "notes.txt").write_text("mine")
    (src / "good" / "new.png").write_bytes(_png(30, seed=7))
    with pytest.raises(DatasetError, match=r"'notes\.txt', which LineGuard did not write"):
        ingest(str(src), str(ds), CFG, overwrite=True)
    assert (ds / "notes.txt").read_text() == "mine"
    (ds / "notes.txt").unlink()
    report = ingest(str(src), str(ds), CFG, overwrite=True)  # a plain dataset is replaced
    assert load_dataset(str(ds)).version == report.version and report.images == 9
    # A symlinked --out is refused (its target would be moved aside, not the link).
    (tmp_path / "link").symlink_to(photos)
    with pytest.raises(DatasetError, match="symbolic link"):
        ingest(str(src), str(tmp_path / "link"), CFG, overwrite=True)
    assert (photos / "holiday.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "link", "photos", "src"]


def test_source_inside_out_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    out = tmp_path / "work"
    src = _tree(out / "photos")
    before = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(IngestError, match="is inside --out"):
        ingest(str(src), str(out), CFG, overwrite=True)
    assert sorted(str(p) for p in out.rglob("*")) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next(tmp_path: Path) -> None:
    import tempfile

    src = _tree(tmp_path / "src")
    dead = _dead_pid()
    stale = tmp_path / f".ds.lg{dead}-0123456789ab.partial"
    (stale / "images").mkdir(parents=True)
    alive = tmp_path / f".ds.lg{os.getpid()}-0123456789ab.partial"  # a run still going: left alone
    alive.mkdir()
    user = tmp_path / ".ds.backup.partial"  # not a name LineGuard makes: left alone
    user.mkdir()
    scratch = Path(tempfile.gettempdir()) / f"lineguard-ingest-{dead}-abcd"
    scratch.mkdir(exist_ok=True)
    ingest(str(src), str(tmp_path / "ds"), CFG)
    assert not stale.exists() and not scratch.exists()
    assert alive.exists() and user.exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"lineguard-ingest-{os.getpid()}-*"))


def test_pool_workers_exit_when_ingest_is_killed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("good", "bad"):
        (src / label).mkdir(parents=True)
        for i in range(150):
            (src / label / f"{i}.png").write_bytes(_png(i, size=16, seed=0 if label == "good" else 1))
    marker = tmp_path / "started"
    script = textwrap.dedent(f'''
        import time, lineguard.ingest as ing
        from lineguard.config import IngestConfig
        real = ing.decode_all
        def slow(entries, config, src, on_step):
            def step(n):
                open({str(marker)!r}, "w").close()
                time.sleep(3600)  # the pool is up; wait here to be killed
            return real(entries, config, src, step)
        ing.decode_all = slow
        ing.ingest({str(src)!r}, {str(tmp_path / "ds")!r}, IngestConfig(workers=2))
    ''')
    env = {**os.environ, "PYTHONPATH": SRC}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        for _ in range(1200):
            if marker.exists() or parent.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "ingest never started its pool"
        workers = _children(parent.pid)
        assert len(workers) >= 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        for _ in range(300):  # liveness, not speed: they must go, not block for half an hour
            if not any(_alive(w) for w in workers):
                break
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "pool workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- reports escape what they show ------------------------------------------------------------------


def test_reports_escape_file_names(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    nasty = "x|y`z <img src=x onerror=alert(1)> \x1b[31mred [link](http:evil) **b**.png"
    (src / "good" / nasty).write_bytes(b"not an image")
    report = ingest(str(src), str(tmp_path / "ds"), CFG)
    md = (tmp_path / "ds" / "report.md").read_text()
    assert "\x1b" not in md and "\\x1b[31mred" in md
    line = next(ln for ln in md.splitlines() if "alert" in ln)
    # One code span (HTML and markup inside it are literal text), then the reason.
    assert line.startswith("- `` good/x|y`z <img") and line.endswith("``: `not_an_image` not\\_an\\_image: not a recognised image format")
    from rich.console import Console

    from lineguard.ingest import print_report

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    report.warnings.append("[bold red]injected[/] \x1b[2J")
    print_report(report, console)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[2J" not in shown and "[bold red]injected[/]" in shown


def test_escape_helpers() -> None:
    assert escape_markdown("a|b*c_<d>&") == "a\\|b\\*c\\_&lt;d&gt;&amp;"
    assert code_span("a`b") == "`` a`b ``" and code_span("a|b", in_table=True) == "`a\\|b`"
    assert escape_html("<a href='x'>\x07") == "&lt;a href=&#x27;x&#x27;&gt;\\x07"
    assert terminal_text("[red]x\u202e") == "\\[red]x\\u202e"


def test_evaluation_report_tables_escape_recipe_names() -> None:
    from lineguard.evaluate.report import _html_table, _md_table

    md = _md_table(["recipe", "n"], [["a|b<script>", "3"]])
    assert "a\\|b&lt;script&gt;" in md and md.count("|") == 2 * 3 + 1 + 3
    assert "<script>" not in _html_table(["recipe"], [["<script>"]])
