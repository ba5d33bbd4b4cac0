"""`zsubmit [run] FUNCTION ARG...`: run one task and print its result; or, with --detach,
hand it to the broker and print its task id. Ctrl-C while it waits cancels the task."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from broker.protocol import (
    DEFAULT_BROKER_URL,
    DEFAULT_MAX_MESSAGE_SIZE,
    PRIORITY_DEFAULT,
    TaskCompleted,
    execute_frames,
)
from broker.security import PeerKeys
from client.api import Client
from client.cli.arguments import read_arguments
from client.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HINTS,
    Broker,
    BrokerKey,
    ClientId,
    ConnectTimeout,
    Curve,
    LogFile,
    LogFormat,
    LogLevel,
    RetryOn,
    Version,
    fail,
    keys_of,
    print_answer,
    reporting,
    retry_on,
    start_logging,
)
from client.cli.split import run_split
from client.control import DEFAULT_TIMEOUT
from client.errors import BrokerError, BrokerTimeout, ClientError, NotFound, TaskFailed
from client.jobs import MAX_PARTS, JobFuture
from client.link import DEFAULT_CONNECT_TIMEOUT, deliver
from client.options import (
    MAX_TASK_TIMEOUT,
    TaskOptions,
    check_name,
    check_task_size,
    with_dependencies,
)
from client.payloads import encode_arguments

RAW_ARGS = "zsubmit.raw_args"  # ctx.meta key: the command line as typed

HELP = """Run FUNCTION(ARG, ...) on a node through the broker and print its result as JSON.

Each ARG is read as JSON when it parses as JSON, else taken as a plain string
(with a warning when it looks like JSON but does not parse). "-" reads one ARG
from stdin and @FILE one from a file, by the same rule. String arguments that
start with "-" go after `--`. Examples, for a node offering the math set
(znode --functions math):

\b
  zsubmit multiply 5 10              sends 5 and 10, prints 50
  zsubmit multiply -3 2.5            negative numbers are arguments too
  zsubmit hash_text hello            sends the string "hello"
  zsubmit hash_text '"42"'           sends the string "42", not the number
  echo hello | zsubmit hash_text -   sends what stdin holds: the string "hello"
  zsubmit hash_text @notes.txt       sends the text of notes.txt
  zsubmit --json multiply 5 10       prints {task_id, exit_code, result, error, attempts}
  zsubmit --task-timeout 5 sleep 60  the node stops it after 5 s (task exit code 124)
  zsubmit --retries 2 --retry-on exception divide 1 0
                                     tries three times (each raises ZeroDivisionError)
  zsubmit --detach sleep 30          prints the task id at once; the task runs on
  zsubmit result TASK_ID --wait 60   prints that task's result once it is done
  zsubmit cancel TASK_ID             cancels it
  zsubmit map power args.jsonl       one task per line ([2, 10]), results in order
  zsubmit --split 8 sum_squares 1 10000000
                                     8 tasks on any free nodes, then summed

Ctrl-C while zsubmit waits cancels the task (exit 130); a second Ctrl-C leaves
it running and prints how to fetch its result. Two different timeouts:
--task-timeout limits how long the function may run on its node; --timeout
limits how long zsubmit waits for the answer.

\b
Commands (zsubmit COMMAND --help for each):
  run FUNCTION [ARG]...    this one; `run` may be left out, unless FUNCTION is
                           named like a command (zsubmit run map 1 2)
  result TASK_ID           print a task's result, waiting for it with --wait S
  cancel TASK_ID           cancel a task
  map FUNCTION [FILE|-]    one task per line of JSON arguments, pipelined
"""

EPILOG = """\b
Exit codes:
  0    the task succeeded; its result is on stdout (--detach: its id)
  1    the task failed ("error: FUNCTION failed (exit N, ErrorType): message"
       on stderr, or "FUNCTION timed out after S s (exit 124, Timeout)", etc.;
       with --json the answer is on stdout too), or it was refused: by the
       broker, or before sending when over the 16 MiB message size limit
  2    bad command line (an option out of range, a --broker URL that is not
       an endpoint, an @FILE that cannot be read)
  3    nothing accepts connections at --broker within --connect-timeout, or
       no answer within --timeout (the task may still run: zsubmit result)
  130  interrupted by Ctrl-C (the task was cancelled unless said otherwise)
"""

Function = Annotated[
    str, typer.Argument(metavar="FUNCTION", help="Name of the function a node offers.")
]
Args = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ARG",
        help="Arguments: JSON if they parse as JSON, else strings; - reads one from stdin, "
        "@FILE from a file.",
    ),
]
Priority = Annotated[
    int,
    typer.Option(min=0, max=9, metavar="P", help="0 to 9; queued tasks run 9 first."),
]
Retries = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=100,
        metavar="N",
        help="Extra attempts if its node dies or its node process crashes (and, with "
        "--retry-on, if the function raises or times out), with growing waits between them "
        "(default: the broker's, 3 unless zbroker start --retries says).",
    ),
]
QueueTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        metavar="S",
        help="Seconds the task may wait in the broker's queue for a free node; after that it "
        "fails with exit code 125 (Expired) instead of running late.",
    ),
]
TaskTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        max=MAX_TASK_TIMEOUT,
        metavar="S",
        help="Seconds the function may run on its node (each attempt); after that the node "
        "stops it and the task fails with exit code 124 (Timeout). At most 604800 (7 days). "
        "Default: the broker's (zbroker start --task-timeout), else no limit. Not how long "
        "zsubmit waits: that is --timeout.",
    ),
]
Wait = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0,
        metavar="S",
        help="Seconds zsubmit waits for the answer, resends included; 0 waits forever. "
        "Not a limit on the function: that is --task-timeout.",
    ),
]
JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the whole answer as one JSON object "
        "{task_id, exit_code, result, error, attempts}, even when the task failed.",
    ),
]
TaskId = Annotated[
    str | None,
    typer.Option(
        "--task-id",
        metavar="ID",
        help="The task's id (1 to 256 characters; default: a random one). Submitting an id "
        "that is queued, running or answered lately gets that task's answer instead of "
        "running it again.",
    ),
]
After = Annotated[
    list[str] | None,
    typer.Option(
        "--after",
        metavar="ID",
        help="Start only once task ID has succeeded (repeat for several); if it fails, this "
        "task fails with exit code 66 without running.",
    ),
]
Split = Annotated[
    int | None,
    typer.Option(
        "--split",
        min=1,
        max=MAX_PARTS,
        metavar="N",
        help="Run the call as a job of about N parts, each a task on whichever node is free, "
        "and print the combined result; for a function whose set declares how to split and "
        "combine it (the math set's sum_squares does). A bar shows the parts finishing.",
    ),
]
Detach = Annotated[
    bool,
    typer.Option(
        "--detach",
        help="Print the task id as soon as the broker holds the task (in its store, when it "
        "has one), and exit 0; the task runs on. zsubmit result ID prints its result later.",
    ),
]


def run(
    ctx: typer.Context,
    function: Function,
    args: Args = None,
    broker: Broker = DEFAULT_BROKER_URL,
    priority: Priority = PRIORITY_DEFAULT,
    retries: Retries = None,
    queue_timeout: QueueTimeout = None,
    task_timeout: TaskTimeout = None,
    retry_on_names: RetryOn = None,
    timeout: Wait = 30.0,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
    client_id: ClientId = None,
    json_output: JsonOutput = False,
    task_id: TaskId = None,
    after: After = None,
    detach: Detach = False,
    split: Split = None,
    log_level: LogLevel = "WARNING",
    log_format: LogFormat = "text",
    log_file: LogFile = None,
    version: Version = False,
) -> None:
    start_logging(log_level, log_format, log_file)
    keys = keys_of(curve, broker_key)
    values = read_arguments(function, args or [], ctx.meta.get(RAW_ARGS, []))
    if split is not None and (detach or after):
        raise fail("--split cannot be combined with --detach or --after", EXIT_USAGE)
    with reporting(broker):  # an option out of range: exit 2
        failures = retry_on(retry_on_names)
        options = TaskOptions(priority, retries, queue_timeout, task_timeout, failures)
        task_id = uuid.uuid4().hex if task_id is None else check_name("task_id", task_id)
    if detach:
        _detach(broker, connect_timeout, keys, client_id, function, values, task_id, options, after)
        return
    _warn_short_wait(timeout, task_timeout)
    wait = timeout if timeout > 0 else None
    with reporting(broker, no_answer=lambda exc: _no_answer(exc, task_id)):
        client = Client(
            broker,
            timeout=wait,
            connect_timeout=connect_timeout,
            priority=priority,
            retries=retries,
            queue_timeout=queue_timeout,
            task_timeout=task_timeout,
            retry_on=failures,
            curve=curve,
            broker_key=broker_key,
            client_id=client_id,
        )
        with client:
            if split is None:
                completed = _wait_for(client, function, values, task_id, after)
            else:
                completed = run_split(
                    client, function, values, split, task_id, wait, _interrupted_job
                )
    print_answer(completed, function, json_output, task_timeout, HINTS)


def _wait_for(
    client: Client, function: str, values: list[Any], task_id: str, after: list[str] | None
) -> TaskCompleted:
    """The task's answer; Ctrl-C cancels the task and exits 130."""
    try:
        return client.execute_raw(function, values, task_id=task_id, after=after)
    except KeyboardInterrupt:
        raise _interrupted(client, task_id) from None


def _interrupted_job(job: JobFuture) -> typer.Exit:
    """Cancel every task of a split job after a Ctrl-C."""
    job.cancel()
    typer.echo(f"\nzsubmit: interrupted: cancelled job {job.task_id} and its parts", err=True)
    return typer.Exit(EXIT_INTERRUPTED)


def _interrupted(client: Client, task_id: str) -> typer.Exit:
    """Cancel the task after a Ctrl-C, unless a second one comes first; says what became
    of the task."""
    typer.echo(
        f"\nzsubmit: interrupted: cancelling task {task_id} (Ctrl-C again leaves it running)",
        err=True,
    )
    fetch = f"zsubmit result {task_id} prints its result"
    try:
        was = client.cancel(task_id, timeout=DEFAULT_TIMEOUT)
    except KeyboardInterrupt:
        outcome = f"task {task_id} was left running; {fetch} when it is done"
    except NotFound:
        outcome = f"the broker does not know task {task_id}: it never arrived, nothing runs"
    except BrokerError as exc:
        outcome = f"task {task_id} could not be cancelled ({exc}); {fetch} when it is done"
    except (BrokerTimeout, ClientError) as exc:
        outcome = f"task {task_id} could not be cancelled ({exc}); try zsubmit cancel {task_id}"
    else:
        if was == "finished":
            outcome = f"task {task_id} had finished already; {fetch}"
        else:
            outcome = f"cancelled task {task_id} (it was {was})"
    typer.echo(f"zsubmit: {outcome}", err=True)
    return typer.Exit(EXIT_INTERRUPTED)


def _detach(
    broker: str,
    connect_timeout: float,
    keys: PeerKeys | None,
    client_id: str | None,
    function: str,
    values: list[Any],
    task_id: str,
    options: TaskOptions,
    after: list[str] | None,
) -> None:
    """Hand the task to the broker, print its id once the broker holds it."""
    with reporting(broker):
        spec = options.spec(task_id, function, encode_arguments(values))
        if after:
            spec = with_dependencies(spec, after)
        check_task_size(spec, DEFAULT_MAX_MESSAGE_SIZE)
        try:
            completed = deliver(
                broker,
                execute_frames(spec, client_id),
                task_id,
                DEFAULT_TIMEOUT,
                connect_timeout,
                keys=keys,
            )
        except KeyboardInterrupt:
            raise fail(
                f"interrupted before the broker confirmed task {task_id}; zsubmit result "
                f"{task_id} tells whether it has it",
                EXIT_INTERRUPTED,
            ) from None
    typer.echo(task_id)
    if completed is not None and completed.exit_code != 0:  # answered already: say so
        raise fail(str(TaskFailed.from_completed(function, completed)), EXIT_FAILED)


def _no_answer(exc: BrokerTimeout, task_id: str) -> str:
    return (
        f"no answer from the broker at {exc.url} within {exc.timeout:g} s; task {task_id} may "
        f"still be queued or running: zsubmit result {task_id} --wait S waits for its answer, "
        f"zsubmit cancel {task_id} stops it (--timeout 0 waits forever)"
    )


def _warn_short_wait(wait: float, task_timeout: float | None) -> None:
    if wait > 0 and task_timeout is not None and task_timeout >= wait:
        typer.echo(
            f"warning: --timeout {wait:g} s is not longer than --task-timeout "
            f"{task_timeout:g} s, so zsubmit may stop waiting before the task ends; "
            "raise --timeout (0 waits forever)",
            err=True,
        )
