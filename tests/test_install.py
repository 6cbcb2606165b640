"""install.py: the crontab entry, its idempotent merge, `install cron --write` against a fake
crontab on PATH (the real one is never touched), and systemd units checked by the real
`systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentjobs.install import add_to_crontab, cron_line, systemd_units

AGENTJOBS = str(Path(sys.executable).parent / "agentjobs")  # the installed script


def test_cron_line_is_exact_with_absolute_quoted_paths_and_escaped_percent() -> None:
    line = cron_line(
        "/usr/local/bin/agentjobs",
        "/home/me/my repo/jobs.d",
        "/home/me/my repo/.agentjobs",
        "/home/me/.local/bin:/usr/bin:/bin",
        "/home/me/logs/tick 100%.log",
    )
    assert line == (
        "* * * * * cd '/home/me/my repo' && PATH=/home/me/.local/bin:/usr/bin:/bin "
        "/usr/local/bin/agentjobs --jobs-dir '/home/me/my repo/jobs.d' "
        "--state-dir '/home/me/my repo/.agentjobs' tick >> '/home/me/logs/tick 100\\%.log' 2>&1"
    )


def test_cron_line_refuses_relative_paths_and_newlines() -> None:
    with pytest.raises(ValueError, match="absolute"):
        cron_line("agentjobs", "/r/jobs.d", "/r/.agentjobs", "/usr/bin", "/r/tick.log")
    with pytest.raises(ValueError, match="newline"):
        cron_line("/bin/agentjobs", "/r/jobs.d", "/r/x\ny", "/usr/bin", "/r/tick.log")


def test_add_to_crontab_twice_keeps_one_entry_and_other_lines() -> None:
    line = cron_line("/bin/agentjobs", "/r/jobs.d", "/r/.agentjobs", "/usr/bin", "/r/t.log")
    theirs = "MAILTO=me@example.com\n0 3 * * * /usr/bin/backup\n"
    once = add_to_crontab(theirs, line, "/r/.agentjobs")
    twice = add_to_crontab(once, line, "/r/.agentjobs")
    assert twice == once
    assert once == theirs + f"# agentjobs: /r/.agentjobs\n{line}\n"


def test_add_to_crontab_replaces_the_entry_of_the_same_state_dir_only() -> None:
    old = cron_line("/old/agentjobs", "/r/jobs.d", "/r/.agentjobs", "/usr/bin", "/r/t.log")
    other = cron_line("/bin/agentjobs", "/s/jobs.d", "/s/.agentjobs", "/usr/bin", "/s/t.log")
    new = cron_line("/new/agentjobs", "/r/jobs.d", "/r/.agentjobs", "/usr/bin", "/r/t.log")
    text = add_to_crontab(add_to_crontab("", old, "/r/.agentjobs"), other, "/s/.agentjobs")
    merged = add_to_crontab(text, new, "/r/.agentjobs")
    assert merged.splitlines() == [
        "# agentjobs: /r/.agentjobs",
        new,
        "# agentjobs: /s/.agentjobs",
        other,
    ]


@pytest.fixture
def fake_crontab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `crontab` first on PATH: `-l` prints the stored file (or fails as cron does when there
    is none), `-` stores stdin."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    store = tmp_path / "crontab.txt"
    script = folder / "crontab"
    script.write_text(
        "#!/bin/sh\n"
        f"store='{store}'\n"
        'if [ "$1" = "-l" ]; then\n'
        '  [ -f "$store" ] || { echo "no crontab for $(id -un)" >&2; exit 1; }\n'
        '  cat "$store"; exit 0\n'
        "fi\n"
        'if [ "$1" = "-" ]; then cat > "$store"; exit 0; fi\n'
        "exit 2\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("crontab") == str(script)
    return store


def test_install_cron_write_merges_into_the_crontab_idempotently(
    cli, fake_crontab: Path, tmp_path: Path, jobs_dir: Path, state_dir: Path
) -> None:
    args = ["--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "install", "cron"]
    printed = cli(*args)
    assert printed.code == 0, printed.err
    line = printed.out.strip()
    assert line.startswith(f"* * * * * cd {tmp_path} && PATH=")
    assert f" --state-dir {state_dir} tick >> {state_dir}/tick.log 2>&1" in line
    assert not fake_crontab.exists()  # printing writes nothing

    first = cli(*args, "--write")  # no crontab yet: that is fine
    assert first.code == 0, first.err
    assert first.out.strip() == line
    assert fake_crontab.read_text() == f"# agentjobs: {state_dir}\n{line}\n"
    assert (state_dir).is_dir()  # the log's folder, so the redirection works at once

    fake_crontab.write_text("0 3 * * * /usr/bin/backup\n" + fake_crontab.read_text())
    assert cli(*args, "--write").code == 0
    assert fake_crontab.read_text() == (
        f"0 3 * * * /usr/bin/backup\n# agentjobs: {state_dir}\n{line}\n"
    )

    custom = cli(*args, "--write", "--log", "cron.log")
    assert custom.code == 0, custom.err
    assert custom.out.strip().endswith(f">> {tmp_path}/cron.log 2>&1")
    assert fake_crontab.read_text().count("# agentjobs:") == 1


def test_install_cron_lists_each_path_directory_once(
    cli, tmp_path: Path, jobs_dir: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin::{bin_dir}/:/bin:/usr/bin:{bin_dir}")
    result = cli("--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "install", "cron")
    assert result.code == 0, result.err
    assert result.out == (
        f"* * * * * cd {tmp_path} && PATH={bin_dir}:/usr/bin:/bin {AGENTJOBS} "
        f"--jobs-dir {jobs_dir} --state-dir {state_dir} tick >> {state_dir}/tick.log 2>&1\n"
    )


def test_install_cron_write_without_crontab_is_a_user_error(
    cli, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = cli("--state-dir", str(state_dir), "install", "cron", "--write")
    assert result.code == 2
    assert "crontab not found on PATH" in result.err


def _verify(paths: list[Path]) -> None:
    # Fails (never skips) when systemd-analyze is missing: .ci/run installs it.
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.access(analyze, os.X_OK), "systemd-analyze is missing; install systemd"
    done = subprocess.run(
        [analyze, "verify", *map(str, paths)], capture_output=True, text=True, check=False
    )
    # verify exits 0 on mere warnings (an unknown key, a bad value): any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_timer_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    repo = tmp_path / "my repo 100%"
    units = systemd_units(
        AGENTJOBS, f"{repo}/jobs.d", f"{repo}/.agentjobs", "/usr/bin:/bin", str(repo)
    )
    assert sorted(units) == ["agentjobs.service", "agentjobs.timer"]
    service, timer = units["agentjobs.service"], units["agentjobs.timer"]
    assert "Type=oneshot\n" in service
    assert "WorkingDirectory=" in service
    assert 'Environment="PATH=/usr/bin:/bin"\n' in service
    assert f'--state-dir "{tmp_path}/my repo 100%%/.agentjobs" tick\n' in service
    for setting in ("OnCalendar=minutely", "Persistent=true", "AccuracySec=1s"):
        assert setting + "\n" in timer
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    _verify([tmp_path / "agentjobs.service", tmp_path / "agentjobs.timer"])


def test_systemd_daemon_unit_covers_kill_grace_and_passes_verify(tmp_path: Path) -> None:
    units = systemd_units(
        AGENTJOBS,
        "/r/jobs.d",
        "/r/.agentjobs",
        "/usr/bin",
        "/r",
        name="nightly",
        daemon=True,
        kill_grace=120,
    )
    assert list(units) == ["nightly-daemon.service"]
    text = units["nightly-daemon.service"]
    assert " daemon\n" in text
    for setting in ("Restart=on-failure", "KillMode=mixed", "TimeoutStopSec=150"):
        assert setting + "\n" in text
    (tmp_path / "nightly-daemon.service").write_text(text)
    _verify([tmp_path / "nightly-daemon.service"])


def test_install_systemd_prints_or_writes_and_never_runs_systemctl(
    cli, tmp_path: Path, jobs_dir: Path, state_dir: Path
) -> None:
    base = ["--jobs-dir", str(jobs_dir), "--state-dir", str(state_dir), "install", "systemd"]
    printed = cli(*base)
    assert printed.code == 0, printed.err
    assert "# agentjobs.service\n" in printed.out and "# agentjobs.timer\n" in printed.out
    assert "OnCalendar=minutely" in printed.out

    units = tmp_path / "units"
    written = cli(*base, "--write", "--dir", str(units), "--name", "repo-a")
    assert written.code == 0, written.err
    assert sorted(p.name for p in units.iterdir()) == ["repo-a.service", "repo-a.timer"]
    assert written.out.strip().endswith(
        "run: systemctl --user daemon-reload && systemctl --user enable --now repo-a.timer"
    )
    _verify(sorted(units.iterdir()))

    daemon = cli(*base, "--write", "--daemon", "--dir", str(units))
    assert daemon.code == 0, daemon.err
    assert "enable --now agentjobs-daemon.service" in daemon.out
    _verify([units / "agentjobs-daemon.service"])

    bad = cli(*base, "--name", "no spaces")
    assert bad.code == 2
    assert "unit name" in bad.err
