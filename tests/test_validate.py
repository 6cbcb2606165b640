"""Every validation rule and error path, with the exact one-line message users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write

J = "repo/jobs.d"

CASES = [
    # (file name, content, the exact line printed)
    (
        "typo.yaml",
        "command: [a]\nsilence_timout: 5m\n",
        "typo.yaml:2:1: silence_timout: unknown key `silence_timout`; did you mean `silence_timeout`?",
    ),
    (
        "camel.yaml",
        "command: [a]\nretryPolicy: {attempts: 3}\n",
        "camel.yaml:2:1: retryPolicy: unknown key `retryPolicy`; did you mean `retry`?",
    ),
    (
        "nested.yaml",
        "command: [a]\nretry: {atempts: 3}\n",
        "nested.yaml:2:9: retry.atempts: unknown key `atempts`; did you mean `attempts`?",
    ),
    (
        "enum.yaml",
        "command: [a]\npriority: hihg\n",
        "enum.yaml:2:11: priority: `hihg` is not one of high, normal, low; did you mean `high`?",
    ),
    (
        "unit.yaml",
        "command: [a]\ntimeout: 90\n",
        "unit.yaml:2:10: timeout: a duration needs a unit: write 90s or 90m (or ISO-8601 PT90S)",
    ),
    (
        "dur.yaml",
        "command: [a]\ntimeout: 10 minutes\n",
        "dur.yaml:2:10: timeout: `10 minutes` is not a duration; write e.g. 90s, 10m, 2h, 1d, 1h30m "
        "or ISO-8601 PT2H",
    ),
    (
        "sexagesimal.yaml",
        "command: [a]\nschedule: {at: 12:30}\n",
        "sexagesimal.yaml:2:16: schedule.at: YAML read `12:30` as the number 750 (base-60 notation); "
        'quote it: "12:30"',
    ),
    (
        "yes.yaml",
        "command: [a]\nenv: {DEBUG: yes}\n",
        "yes.yaml:2:14: env.DEBUG: YAML 1.1 read `yes` as the boolean true; quote it if you meant "
        'the text: "yes"',
    ),
    (
        "number.yaml",
        "command: [a]\nenv: {PORT: 8080}\n",
        'number.yaml:2:13: env.PORT: YAML read `8080` as a number; quote it: "8080"',
    ),
    (
        "on.yaml",
        "command: [a]\noverlap: on\n",
        "on.yaml:2:10: overlap: YAML 1.1 read `on` as a boolean; write one of skip, queue",
    ),
    (
        "alias.yaml",
        "command: [a]\nschedule:\n  cron: */5 * * * *\n",
        "alias.yaml:3:10: a value starting with `*` reads as a YAML alias; quote the cron "
        'expression, e.g. cron: "*/5 * * * *"',
    ),
    (
        "twosched.yaml",
        "command: [a]\nschedule:\n  every: 1h\n  cron: '@daily'\n",
        "twosched.yaml:3:3: schedule: schedule has cron and every; keep exactly one of cron, every "
        "or at",
    ),
    (
        "nosched.yaml",
        "command: [a]\nschedule: {catchup: all}\n",
        "nosched.yaml:2:11: schedule: schedule needs exactly one of cron, every or at",
    ),
    (
        "nothing.yaml",
        "description: x\n",
        "nothing.yaml:1:1: a job needs exactly one of command or agent",
    ),
    (
        "both.yaml",
        "command: [a]\nagent: {kind: claude, prompt: hi}\n",
        "both.yaml:1:1: a job has command and agent; keep exactly one of command or agent",
    ),
    (
        "noprompt.yaml",
        "agent: {kind: claude}\n",
        "noprompt.yaml:1:8: agent: agent needs exactly one of prompt or prompt_file",
    ),
    (
        "kind.yaml",
        "agent: {kind: claud, prompt: hi}\n",
        "kind.yaml:1:15: agent.kind: `claud` is not one of claude, codex, gemini, aider, custom; "
        "did you mean `claude`?",
    ),
    (
        "badcron.yaml",
        "command: [a]\nschedule: {cron: '61 * * * *'}\n",
        "badcron.yaml:2:18: schedule.cron: cron expression `61 * * * *` is invalid: "
        "[61 * * * *] is not acceptable, out of range",
    ),
    (
        "fields.yaml",
        "command: [a]\nschedule: {cron: '* * *'}\n",
        "fields.yaml:2:18: schedule.cron: cron expression `* * *` has 3 fields; write 5: minute "
        "hour day-of-month month day-of-week",
    ),
    (
        "macro.yaml",
        "command: [a]\nschedule: {cron: '@daly'}\n",
        "macro.yaml:2:18: schedule.cron: unknown cron macro `@daly`; use one of @annually, @daily, "
        "@hourly, @midnight, @monthly, @weekly, @yearly",
    ),
    (
        "tz.yaml",
        "command: [a]\nschedule: {cron: '0 2 * * *', timezone: Europe/Berln}\n",
        "tz.yaml:2:41: schedule.timezone: unknown time zone `Europe/Berln`; use an IANA name such "
        "as UTC or Europe/Berlin",
    ),
    (
        "at.yaml",
        "command: [a]\nschedule: {at: tomorrow}\n",
        "at.yaml:2:16: schedule.at: `tomorrow` is not an ISO-8601 time; write e.g. "
        "'2026-12-01T09:30' or '2026-12-01T09:30:00+01:00'",
    ),
    (
        "str.yaml",
        "command: make test\n",
        "str.yaml:1:10: command: command is a string; write it as a list ([make, test]) or set "
        "`shell: true`",
    ),
    (
        "shelllist.yaml",
        "command: [make, test]\nshell: true\n",
        "shelllist.yaml:2:8: shell: `shell: true` takes a string command; write command as one "
        "string",
    ),
    (
        "secret.yaml",
        "command: [a]\nsecrets: [TOKEN]\nenv: {TOKEN: abc}\n",
        "secret.yaml:3:14: env.TOKEN: `TOKEN` is a secret but has a value in the job file; move it "
        "to env_file or the environment",
    ),
    (
        "regex.yaml",
        "command: [a]\nretry: {never_on: [{output: 'x('}]}\n",
        "regex.yaml:2:29: retry.never_on[0].output: invalid regular expression: missing ), "
        "unterminated subpattern at position 1",
    ),
    (
        "backoff.yaml",
        "command: [a]\nretry: {backoff: {initial: 1h, max: 1m}}\n",
        "backoff.yaml:2:37: retry.backoff.max: max is shorter than initial; raise max or lower "
        "initial",
    ),
    (
        "zero.yaml",
        "command: [a]\ntimeout: 0s\n",
        "zero.yaml:2:10: timeout: timeout must be longer than zero",
    ),
    (
        "outcome.yaml",
        "command: [a]\nretry: {never_on: [bogus]}\n",
        "outcome.yaml:2:20: retry.never_on[0]: `bogus` is not one of failed, timeout, silence, "
        "lost, rate_limited, verify_failed",
    ),
    (
        "exitcode.yaml",
        "command: [a]\nretry: {never_on: [300]}\n",
        "exitcode.yaml:2:20: retry.never_on[0]: must be at most 255, got 300",
    ),
    ("empty.yaml", "command: []\n", "empty.yaml:1:10: command: must not be empty"),
    (
        "null.yaml",
        "command: [a]\ntimeout:\n",
        "null.yaml:2:9: timeout: is empty; give a string or remove the key",
    ),
    (
        "attempts.yaml",
        "command: [a]\nretry: {attempts: 0}\n",
        "attempts.yaml:2:19: retry.attempts: must be at least 1, got 0",
    ),
    (
        "name.yaml",
        "name: Nightly Tests\ncommand: [a]\n",
        "name.yaml:1:7: name: `Nightly Tests` is not a valid job name: use lowercase letters, "
        "digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters",
    ),
    (
        "Bad Stem.yaml",
        "command: [a]\n",
        "Bad Stem.yaml:1:1: the file name `Bad Stem` is not a valid job name; set `name:` or rename "
        "the file (lowercase letters, digits, '.', '_', '-')",
    ),
    (
        "multi.yaml",
        "command: [a]\n---\nname: two\ncommand: [b]\n",
        "multi.yaml:1:1: this file holds several jobs: give each one a `name`",
    ),
    ("list.yaml", "- a\n- b\n", "list.yaml:1:1: a job is a mapping of keys, got a list"),
    (
        "dup.yaml",
        "command: [a]\ncommand: [b]\n",
        "dup.yaml:2:1: duplicate key `command` (first at line 1); keep one",
    ),
    (
        "tag.yaml",
        "command: !!python/object/apply:os.system ['echo pwned']\n",
        "tag.yaml:1:10: invalid YAML: tag 'tag:yaml.org,2002:python/object/apply:os.system' is "
        "not allowed; remove it",
    ),
    (
        "custom.yaml",
        "command: !shell [a]\n",
        "custom.yaml:1:10: invalid YAML: tag '!shell' is not allowed; remove it",
    ),
    (
        "tab.yaml",
        "command: [a]\nschedule:\n\tevery: 1h\n",
        "tab.yaml:3:1: tabs are not allowed for indentation in YAML; indent with spaces",
    ),
    (
        "url.yaml",
        "command: [a]\nnotify: {webhook: 'ftp://x'}\n",
        "url.yaml:2:19: notify.webhook: `ftp://x` is not an http:// or https:// URL",
    ),
    (
        "envname.yaml",
        "command: [a]\nsecrets: [1BAD]\n",
        "envname.yaml:2:11: secrets[0]: `1BAD` is not an environment variable name (letters, "
        "digits, '_')",
    ),
    (
        "verify.yaml",
        "command: [a]\nverify: {comand: [make]}\n",
        "verify.yaml:2:10: verify.comand: unknown key `comand`; did you mean `command`?",
    ),
    (
        "never.yaml",
        "command: [a]\nschedule: {cron: '0 0 31 2 *'}\n",
        "never.yaml:2:18: schedule.cron: cron expression `0 0 31 2 *` never fires (no such date); check day and month",
    ),
    (
        "range.yaml",
        "command: [a]\nschedule: {at: '9999-12-31T23:59', timezone: Etc/GMT+12}\n",
        "range.yaml:2:16: schedule.at: `9999-12-31T23:59` is out of range in Etc/GMT+12",
    ),
    (
        "nul.yaml",
        'command: [a]\nworkdir: "a\\0b"\n',
        "nul.yaml:2:10: workdir: contains a NUL character; remove it",
    ),
    (
        "long.yaml",
        "command: [a]\nschedule: {every: 1h, jitter: 99999999w}\n",
        "long.yaml:2:31: schedule.jitter: `99999999w` is longer than the 10-year limit on durations",
    ),
    (
        "nan.yaml",
        "command: [a]\nretry: {backoff: {multiplier: .nan}}\n",
        "nan.yaml:2:31: retry.backoff.multiplier: nan is not a finite number",
    ),
    (
        "every.yaml",
        "command: [a]\nschedule: {every: 500ms}\n",
        "every.yaml:2:19: schedule.every: every must be at least 1s",
    ),
    (
        "runs-on-camel.yaml",
        "command: [a]\nrunsOn: [linux]\n",
        "runs-on-camel.yaml:2:1: runsOn: unknown key `runsOn`; did you mean `runs_on`?",
    ),
    (
        "runs-on-dash.yaml",
        "command: [a]\nruns-on: [linux]\n",
        "runs-on-dash.yaml:2:1: runs-on: unknown key `runs-on`; did you mean `runs_on`?",
    ),
    (
        "runs-on-tags.yaml",
        "command: [a]\ntags: [linux]\n",
        "runs-on-tags.yaml:2:1: tags: unknown key `tags`; did you mean `runs_on`?",
    ),
    (
        "runs-on-empty.yaml",
        "command: [a]\nruns_on: []\n",
        "runs-on-empty.yaml:2:10: runs_on: must not be empty",
    ),
    (
        "runs-on-label.yaml",
        'command: [a]\nruns_on: [linux, "big box"]\n',
        "runs-on-label.yaml:2:18: runs_on[1]: `big box` is not a host label: use letters, "
        "digits, '.', '_' and '-'",
    ),
    (
        "runs-on-twice.yaml",
        "command: [a]\nruns_on: [linux, big, linux]\n",
        "runs-on-twice.yaml:2:10: runs_on: lists the same entry twice; remove the duplicate",
    ),
    (
        "runs-on-newline.yaml",
        'command: [a]\nruns_on: ["linux\\n"]\n',
        "runs-on-newline.yaml:2:11: runs_on[0]: a host label cannot end with a line break; "
        "remove it",
    ),
    (
        "runs-on-string.yaml",
        "command: [a]\nruns_on: linux\n",
        "runs-on-string.yaml:2:10: runs_on: expected a list, got a string",
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_prints_its_exact_message(
    cli, jobs_dir: Path, name: str, content: str, expected: str
) -> None:
    write(jobs_dir / name, content)
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    assert f"{J}/{expected}" in result.out.splitlines(), result.out
    assert "Traceback" not in result.out + result.err


def test_every_error_in_every_file_is_reported_in_one_run(cli, jobs_dir: Path) -> None:
    for name, content, _ in CASES:
        write(jobs_dir / name, content)
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    for _, _, expected in CASES:
        assert f"{J}/{expected}" in result.out.splitlines()
    assert result.err.strip().endswith(f"in {len(CASES)} files")


def test_cross_file_rules_unique_names_needs_and_cycles(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\nneeds: [b]\n")
    write(jobs_dir / "b.yaml", "command: [a]\nneeds: [a]\n")
    write(jobs_dir / "c.yaml", "name: a\ncommand: [a]\n")
    write(jobs_dir / "d.yaml", "command: [a]\nneeds: [aa, zzz, d]\n")
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    lines = result.out.splitlines()
    assert f"{J}/a.yaml:2:8: needs: `needs` forms a cycle: a -> b -> a; remove one link" in lines
    assert (
        f"{J}/c.yaml:1:7: name: job name `a` is already used at {J}/a.yaml:1; names must be unique"
    ) in lines
    assert f"{J}/d.yaml:2:9: needs[0]: no job named `aa`; did you mean `a`?" in lines
    assert f"{J}/d.yaml:2:13: needs[1]: no job named `zzz`" in lines
    assert f"{J}/d.yaml:2:18: needs[2]: a job cannot need itself" in lines
    assert len(lines) == 5


def test_semantic_problems_are_reported_beside_a_schema_error_in_another_key(
    cli, jobs_dir: Path
) -> None:
    write(
        jobs_dir / "a.yaml",
        """
        command: [make, test]
        priority: urgent
        schedule: {cron: "61 * * * *", timezone: Mars/Olympus}
        kill_grace: 0s
        """,
    )
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    assert result.out.splitlines() == [
        f"{J}/a.yaml:2:11: priority: `urgent` is not one of high, normal, low",
        f"{J}/a.yaml:3:18: schedule.cron: cron expression `61 * * * *` is invalid: [61 * * * *] "
        "is not acceptable, out of range",
        f"{J}/a.yaml:3:42: schedule.timezone: unknown time zone `Mars/Olympus`; use an IANA name "
        "such as UTC or Europe/Berlin",
        f"{J}/a.yaml:4:13: kill_grace: kill_grace must be longer than zero",
    ]
    assert result.err == "4 errors in 1 file\n"


def test_a_refused_key_is_not_checked_again_nor_misleads_another_rule(cli, jobs_dir: Path) -> None:
    # `shell` is refused: the string command is not blamed on it; `timeout` is refused: the
    # silence_timeout comparison is not made against the default
    write(
        jobs_dir / "a.yaml",
        "command: make test\nshell: yes please\ntimeout: soon\nsilence_timeout: 2h\n",
    )
    result = cli("--jobs-dir", J, "validate")
    assert result.out.splitlines() == [
        f"{J}/a.yaml:2:8: shell: expected true or false, got `yes please`",
        f"{J}/a.yaml:3:10: timeout: `soon` is not a duration; write e.g. 90s, 10m, 2h, 1d, "
        "1h30m or ISO-8601 PT2H",
    ]
    assert result.err == "2 errors in 1 file\n"


def test_a_need_that_shares_a_word_with_a_job_gets_a_did_you_mean(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "nightly-tests.yaml", "command: [make, test]\n")
    write(jobs_dir / "refresh-docs.yaml", "command: [make, docs]\n")
    write(jobs_dir / "a.yaml", "command: [a]\nneeds: [fix-test, docs, zzz]\n")
    result = cli("--jobs-dir", J, "validate")
    assert result.out.splitlines() == [
        f"{J}/a.yaml:2:9: needs[0]: no job named `fix-test`; did you mean `nightly-tests`?",
        f"{J}/a.yaml:2:19: needs[1]: no job named `docs`; did you mean `refresh-docs`?",
        f"{J}/a.yaml:2:25: needs[2]: no job named `zzz`",
    ]


def test_validate_plan_and_apply_close_with_one_summary_wording(
    cli, jobs_dir: Path, state_dir: Path
) -> None:
    base = ("--jobs-dir", J, "--state-dir", str(state_dir))
    write(jobs_dir / "a.yaml", "command: [a]\ntimeout: soon\npriority: hihg\n")
    write(jobs_dir / "b.yaml", "command: [b]\ntimeout: 0s\n")
    write(jobs_dir / "c.yaml", "command: [c]\nworkdir: /nonexistent/place\n")
    problems = [
        f"{J}/a.yaml:2:10: timeout: `soon` is not a duration; write e.g. 90s, 10m, 2h, 1d, "
        "1h30m or ISO-8601 PT2H",
        f"{J}/a.yaml:3:11: priority: `hihg` is not one of high, normal, low; did you mean `high`?",
        f"{J}/b.yaml:2:10: timeout: timeout must be longer than zero",
    ]
    warning = (
        f"{J}/c.yaml:2:10: workdir: warning: /nonexistent/place does not exist on this machine"
    )
    checked = cli(*base, "validate")
    assert (checked.code, checked.out.splitlines()) == (2, problems)
    assert checked.err == f"{warning}\n3 errors in 2 files, 1 warning\n"
    for verb in ("plan", "apply"):
        refused = cli(*base, verb)
        assert (refused.code, refused.out.splitlines()) == (2, problems)
        assert refused.err == (
            f"{warning}\nagentjobs: 3 errors in 2 files, 1 warning; nothing was changed\n"
        )
    (jobs_dir / "a.yaml").unlink()
    (jobs_dir / "b.yaml").unlink()
    assert cli(*base, "validate").err == f"{warning}\nok: 1 job in 1 file, 1 warning\n"


def test_referenced_files_must_exist_relative_to_the_job_file(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "agent: {kind: claude, prompt_file: p.md}\nenv_file: .env\n")
    result = cli("--jobs-dir", J, "validate")
    base = jobs_dir.resolve()
    assert result.out.splitlines() == [
        f"{J}/a.yaml:1:36: agent.prompt_file: prompt file p.md not found (looked in {base})",
        f"{J}/a.yaml:2:11: env_file: env file .env not found (looked in {base})",
    ]
    write(jobs_dir / "p.md", "fix it\n")
    write(jobs_dir / ".env", "A=1\n")
    assert cli("--jobs-dir", J, "validate").code == 0


def test_warnings_never_fail_validation(cli, jobs_dir: Path) -> None:
    write(
        jobs_dir / "a.yaml",
        """
        command: [a]
        workdir: /nonexistent/place
        schedule: {at: '2001-01-01T00:00'}
        """,
    )
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 0
    assert (
        f"{J}/a.yaml:2:10: workdir: warning: /nonexistent/place does not exist on this "
        "machine" in result.err
    )
    assert f"{J}/a.yaml:3:16: schedule.at: warning: 2001-01-01T00:00 is in the past" in result.err
    assert result.err.strip().endswith("ok: 1 job in 1 file, 2 warnings")


def test_json_output_lists_every_problem_as_an_object(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\nsilence_timout: 5m\n")
    result = cli("--jobs-dir", J, "--output", "json", "validate")
    assert result.code == 2
    assert json.loads(result.out) == [
        {
            "file": f"{J}/a.yaml",
            "line": 2,
            "column": 1,
            "path": "silence_timout",
            "message": "unknown key `silence_timout`; did you mean `silence_timeout`?",
            "severity": "error",
        }
    ]


def test_global_config_is_checked_too(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurent: 3\ntimezone: Mars/Olympus\n")
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    timezone = (
        f"{J}/agentjobs.yaml:2:11: timezone: unknown time zone `Mars/Olympus`; use an IANA name "
        "such as UTC or Europe/Berlin"
    )
    assert result.out.splitlines() == [  # both at once: the time zone beside the unknown key
        f"{J}/agentjobs.yaml:1:1: max_concurent: unknown key `max_concurent`; did you mean "
        "`max_concurrent`?",
        timezone,
    ]
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 3\ntimezone: Mars/Olympus\n")
    assert cli("--jobs-dir", J, "validate").out.splitlines() == [timezone]


def test_runs_on_with_valid_host_labels_passes(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\nruns_on: [linux, big, x86_64, gpu.A100-80g]\n")
    result = cli("--jobs-dir", J, "validate")
    assert (result.code, result.out) == (0, ""), result.out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("lease: 500ms\n", "agentjobs.yaml:1:8: lease: lease must be at least 1s"),
        ("lease: 0s\n", "agentjobs.yaml:1:8: lease: lease must be at least 1s"),
        (
            "lease: 30\n",
            "agentjobs.yaml:1:8: lease: a duration needs a unit: write 30s or 30m "
            "(or ISO-8601 PT30S)",
        ),
        (
            "lease: soon\n",
            "agentjobs.yaml:1:8: lease: `soon` is not a duration; write e.g. 90s, 10m, 2h, 1d, "
            "1h30m or ISO-8601 PT2H",
        ),
        (
            "max_concurrent_per_host: 0\n",
            "agentjobs.yaml:1:26: max_concurrent_per_host: must be at least 1, got 0",
        ),
        (
            "max_concurrent_per_host: many\n",
            "agentjobs.yaml:1:26: max_concurrent_per_host: expected an integer, got a string",
        ),
        (
            "maxConcurrentPerHost: 2\n",
            "agentjobs.yaml:1:1: maxConcurrentPerHost: unknown key `maxConcurrentPerHost`; "
            "did you mean `max_concurrent_per_host`?",
        ),
        (
            "lease_timeout: 1m\n",
            "agentjobs.yaml:1:1: lease_timeout: unknown key `lease_timeout`; did you mean `lease`?",
        ),
    ],
)
def test_global_config_multi_host_settings_are_checked(
    cli, jobs_dir: Path, content: str, expected: str
) -> None:
    write(jobs_dir / "agentjobs.yaml", content)
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = cli("--jobs-dir", J, "validate")
    assert result.code == 2
    assert result.out.splitlines() == [f"{J}/{expected}"]


def test_global_config_multi_host_settings_accept_valid_values(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurrent: 8\nmax_concurrent_per_host: 2\nlease: 1s\n")
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = cli("--jobs-dir", J, "validate")
    assert (result.code, result.out) == (0, ""), result.out


def test_validating_single_files_checks_needs_against_their_siblings(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", "command: [a]\n")
    write(jobs_dir / "b.yaml", "command: [a]\nneeds: [a]\n")
    write(jobs_dir / "broken.yaml", "command: [a\n")
    result = cli("validate", f"{J}/b.yaml")
    assert (result.code, result.out) == (0, "")
    assert result.err == "ok: 1 job in 1 file\n"


def test_missing_path_is_an_error_not_a_crash(cli) -> None:
    result = cli("validate", "nope.yaml")
    assert result.code == 2
    assert result.out.splitlines() == ["nope.yaml:1:1: no such file or directory"]


def test_missing_jobs_dir_is_one_clear_line(cli) -> None:
    result = cli("--jobs-dir", "nowhere", "validate")
    assert result.code == 2
    assert result.err == (
        "agentjobs: error: jobs directory nowhere not found; pass files or --jobs-dir\n"
    )


def test_the_bundled_examples_are_valid(cli) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples" / "jobs.d"
    result = cli("--jobs-dir", str(examples), "validate")
    assert result.code == 0, result.out


def test_global_defaults_are_merged_under_each_job(jobs_dir: Path) -> None:
    from agentjobs.validate import load_jobs_dir

    write(
        jobs_dir / "agentjobs.yaml",
        """
        timezone: Europe/Berlin
        timeout: 2h
        retry: {attempts: 3, backoff: {initial: 2m, max: 1h}}
        env: {A: "1", B: "2"}
        secrets: [TOKEN]
        """,
    )
    write(
        jobs_dir / "a.yaml",
        """
        command: [a]
        schedule: {cron: '0 2 * * *'}
        retry: {backoff: {max: 10m}}
        env: {B: "3"}
        secrets: [OTHER]
        """,
    )
    result = load_jobs_dir(jobs_dir)
    assert result.ok, result.problems
    spec = result.jobs[0].spec
    assert spec.schedule is not None and spec.schedule.timezone == "Europe/Berlin"
    assert spec.timeout == 7200
    assert (spec.retry.attempts, spec.retry.backoff.initial, spec.retry.backoff.max) == (
        3,
        120,
        600,
    )
    assert spec.env == (("A", "1"), ("B", "3"))
    assert spec.secrets == ("OTHER", "TOKEN")
    assert result.config.max_concurrent == 2


def test_naming_the_config_file_checks_every_job_it_applies_to(cli, jobs_dir: Path) -> None:
    write(jobs_dir / "agentjobs.yaml", "timeout: 2h\n")
    write(jobs_dir / "a.yaml", "command: [a]\nsilence_timeout: 3h\n")
    result = cli("validate", f"{J}/agentjobs.yaml")
    assert result.code == 0
    assert "silence_timeout is not shorter than timeout: it never fires" in result.err
    assert result.err.endswith("\nok: 1 job in 1 file, 1 warning\n")


def test_each_directory_is_read_with_its_own_config(cli, tmp_path: Path) -> None:
    write(tmp_path / "one/jobs.d/agentjobs.yaml", "retry: {attempts: 0}\n")
    write(tmp_path / "one/jobs.d/a.yaml", "command: [a]\n")
    write(tmp_path / "two/jobs.d/a.yaml", "command: [a]\n")
    result = cli("validate", "two/jobs.d/a.yaml", "one/jobs.d/a.yaml")
    assert result.code == 2
    assert result.out.splitlines() == [
        "one/jobs.d/agentjobs.yaml:1:19: retry.attempts: must be at least 1, got 0",
    ]


def test_deep_nesting_is_refused_without_crashing_the_parser(cli, jobs_dir: Path) -> None:
    (jobs_dir / "deep.yaml").write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = cli("--jobs-dir", J, "validate")
    assert result.out.splitlines() == [f"{J}/deep.yaml:1:1: nesting deeper than 64 levels"]
