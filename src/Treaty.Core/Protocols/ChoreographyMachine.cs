using System.Collections.Immutable;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Protocols;

/// <summary>
/// A choreographed saga as the coordinator sees it. There is no orchestrator: the services drive
/// the saga with events over their broker and report each event here, so the coordinator can show
/// and watch the saga like an orchestrated one. It never calls a participant; its state is built
/// from the reported events only:
/// <list type="bullet">
/// <item>each new event is journaled (branch: its service, op: its type) and shows as an operation
/// of its service's branch; a message id already recorded is ignored (the outbox may report twice);</item>
/// <item>the saga runs until an event carries an outcome: <c>completed</c> commits it,
/// <c>compensated</c> or <c>failed</c> aborts it; events after that are recorded but change nothing;</item>
/// <item>no new event within the last event's <c>timeoutMs</c> (or the default) makes it stuck,
/// with the alert; the next event clears the mark;</item>
/// <item>an operator's retry clears the mark and restarts the wait; an operator's abort marks it
/// aborted (nothing to call: the services must compensate on their own).</item>
/// </list>
/// </summary>
public sealed class ChoreographyMachine : IProtocolMachine
{
    /// <summary>The op a stuck choreography waits for (shown as <c>stuckOn.op</c>).</summary>
    public const string NextEvent = "next-event";

    /// <summary>The fingerprint of every choreography: its definition is the events, not a request.</summary>
    public const string Fingerprint = "choreography";

    private const string Watching = "watching";

    /// <summary>How often a stuck choreography is looked at again (it changes nothing; it keeps it off the recovery's always-due list).</summary>
    public static readonly TimeSpan StuckRecheck = TimeSpan.FromHours(1);

    private static readonly ProtocolShape ChoreographyShape = new(
        BranchOperations: [],
        RequiredOperations: [],
        TransactionOperations: [],
        Phases: [new(Watching, NextEvent)],
        DependsOn: DependsOnDefault.None,
        AllowsDependsOn: false);

    private readonly long _defaultTimeoutMs;

    /// <summary>A machine whose sagas wait <paramref name="defaultTimeout"/> for an event that names no timeout.</summary>
    public ChoreographyMachine(TimeSpan? defaultTimeout = null)
    {
        var ms = (long)(defaultTimeout?.TotalMilliseconds ?? TreatyDefaults.ChoreographyTimeoutMs);
        _defaultTimeoutMs = Math.Clamp(ms, 1, TreatyDefaults.MaxTimeoutMs);
    }

    /// <inheritdoc />
    public Protocol Protocol => Protocol.Choreography;

    /// <inheritdoc />
    public ProtocolShape Shape => ChoreographyShape;

    /// <summary>The spec of a choreography created by its first event.</summary>
    public static TransactionSpec SpecFor(string gid) => new(gid, Protocol.Choreography, "null", [], null, null);

    /// <summary>A choreography is created by its first reported event, never by a submit.</summary>
    public IEnumerable<ValidationError> Validate(TransactionSpec spec)
    {
        yield return new("protocol", "A choreography is created by the first event its services report (POST /api/v1/choreography/events), not by a submit.");
    }

    /// <inheritdoc />
    public TransactionState Create(TransactionSpec spec, string fingerprint, DateTimeOffset now) =>
        new(spec, fingerprint, TransactionStatus.Pending, null, now, now, null, now, [], 0)
        {
            Phase = Watching,
            Choreography = new([], now, _defaultTimeoutMs, null, null),
        };

    /// <summary>Any time before the end: there is nothing to undo here, the services compensate.</summary>
    public bool CanAbort(TransactionState state) => !state.IsTerminal;

    /// <summary>A service reads as the outcome of its last event.</summary>
    public BranchReading ReadBranch(TransactionState state, int branch)
    {
        var last = state.Branches[branch].Ops.MaxBy(o => o.LastAttemptAt);
        return new(last?.Status == OpStatus.Failed ? "failed" : "reported", null);
    }

    /// <inheritdoc />
    public Decision Decide(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        // Every change is written before it is answered or shown: a reporter stops reporting an event
        // once it is answered, and an operator's retry must show at once.
        var decision = DecideCore(state, @event, context);
        return decision.Changed(state) ? decision with { Acknowledged = true } : decision;
    }

    private Decision DecideCore(TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        var watch = state.Choreography ?? new([], state.CreatedAt, _defaultTimeoutMs, null, null);
        var now = context.Now;
        switch (@event)
        {
            case Submitted when state.Status == TransactionStatus.Pending:
                return Watch(state with { Status = TransactionStatus.Running, Choreography = watch with { LastEventAt = now } }, now,
                    [new(now, JournalKinds.Submitted, Detail: "choreography: created by its first reported event")], []);

            case EventReported reported:
                return Record(state, watch, reported.Event, now);

            case TimerFired or Resumed when !state.IsTerminal:
                {
                    JournalEntry[] journal = @event is Resumed resumed ? [new(now, JournalKinds.Resumed, Detail: resumed.Detail)] : [];
                    if (state.Stuck || watch.DueBy > now)
                    {
                        return journal.Length == 0 && (state.Stuck ? state.NextWakeAt > now : state.NextWakeAt == watch.DueBy)
                            ? Unchanged(state)
                            : Watch(state, now, journal, []);
                    }

                    var cause = new StuckCause(watch.LastService, NextEvent, watch.MessageIds.Length, null,
                        $"no next event within its timeout ({watch.TimeoutMs} ms) after {watch.LastType ?? "the saga was created"}");
                    var detail = cause.LastError!;
                    var stuck = state with { StuckOn = cause };
                    return Watch(stuck, now,
                        [.. journal, new(now, JournalKinds.Stuck, cause.Branch, NextEvent, cause.Attempts, null, detail)],
                        [new Alert("stuck", $"Transaction {state.Gid} is stuck: {detail}")]);
                }

            case AdminRetry retry when !state.IsTerminal:
                return Watch(state with { StuckOn = null, Choreography = watch with { LastEventAt = now } }, now,
                    [new(now, JournalKinds.OperatorRetry, Detail: $"by {retry.Actor}: waiting {watch.TimeoutMs} ms for the next event again")], []);

            case AdminAbort abort when !state.IsTerminal:
                {
                    var why = $"aborted by operator {abort.Actor}" + (string.IsNullOrEmpty(abort.Reason) ? "" : $": {abort.Reason}");
                    return End(state with { Reason = why }, TransactionStatus.Aborted, now,
                        [new(now, JournalKinds.OperatorAbort, Detail: why + " (nothing to call: the services compensate on their own)")]);
                }

            default:
                return Unchanged(state);
        }
    }

    private Decision Record(TransactionState state, ChoreographyState watch, ChoreographyEvent e, DateTimeOffset now)
    {
        if (watch.MessageIds.Contains(e.MessageId, StringComparer.Ordinal) || watch.MessageIds.Length >= TreatyDefaults.MaxChoreographyEvents)
        {
            return Unchanged(state); // reported twice (the outbox relays at least once), or over the cap
        }

        var sequence = watch.MessageIds.Length + 1;
        var late = state.IsTerminal;
        var notes = new List<string> { $"message {e.MessageId}" };
        if (e.Outcome is { } o)
        {
            notes.Add($"outcome {o.ToWire()}");
        }

        if (e.ReportedAt is { } at)
        {
            notes.Add($"reported at {at:O}");
        }

        if (late)
        {
            notes.Add($"after the saga ended ({state.Status.ToWire()}): recorded, the outcome stands");
        }
        else if (state.Stuck)
        {
            notes.Add("moving again: no longer stuck");
        }

        var journal = new List<JournalEntry> { new(now, JournalKinds.Event, e.Service, e.Type, sequence, null, string.Join("; ", notes), null, e.PayloadJson) };
        var next = state with
        {
            Branches = WithEvent(state.Branches, e, now),
            Choreography = watch with { MessageIds = watch.MessageIds.Add(e.MessageId) },
            UpdatedAt = now,
        };
        if (late)
        {
            return new Decision(next, [], [.. journal]);
        }

        next = next with
        {
            StuckOn = null,
            Choreography = next.Choreography! with
            {
                LastEventAt = now,
                TimeoutMs = Math.Clamp(e.TimeoutMs ?? _defaultTimeoutMs, 1, TreatyDefaults.MaxTimeoutMs),
                LastType = e.Type,
                LastService = e.Service,
            },
        };

        switch (e.Outcome)
        {
            case ChoreographyOutcome.Completed:
                return End(next, TransactionStatus.Committed, now, journal);
            case ChoreographyOutcome.Compensated or ChoreographyOutcome.Failed:
                return End(next with { Reason = $"{e.Service} reported {e.Type} ({e.Outcome.Value.ToWire()})" }, TransactionStatus.Aborted, now, journal);
            default:
                return Watch(next, now, journal, []);
        }
    }

    private static ImmutableArray<BranchState> WithEvent(ImmutableArray<BranchState> branches, ChoreographyEvent e, DateTimeOffset now)
    {
        var index = -1;
        for (var i = 0; i < branches.Length; i++)
        {
            if (branches[i].Name == e.Service)
            {
                index = i;
                break;
            }
        }

        var branch = index >= 0 ? branches[index] : new BranchState(e.Service, []);
        var op = branch.TryOp(e.Type) ?? OpState.New(e.Type);
        op = op with
        {
            Status = e.Outcome == ChoreographyOutcome.Failed ? OpStatus.Failed : OpStatus.Succeeded,
            Attempts = op.Attempts + 1,
            FirstAttemptAt = op.FirstAttemptAt ?? now,
            LastAttemptAt = now,
            FinishedAt = now,
            ResultJson = e.PayloadJson ?? op.ResultJson,
        };
        branch = branch.TryOp(e.Type) is null ? branch with { Ops = branch.Ops.Add(op) } : branch.With(op);
        return index >= 0 ? branches.SetItem(index, branch) : branches.Add(branch);
    }

    /// <summary>
    /// A running saga: wake at its due time. Once stuck only an event or an operator moves it, but it
    /// still gets a far wake-up (<see cref="StuckRecheck"/>): a non-terminal transaction without one
    /// would be due for recovery at every pass, ahead of every other.
    /// </summary>
    private static Decision Watch(TransactionState next, DateTimeOffset now, IEnumerable<JournalEntry> journal, ImmutableArray<Command> commands) =>
        new(next with
        {
            UpdatedAt = now,
            NextWakeAt = next.Stuck ? now + StuckRecheck : next.Choreography!.DueBy,
        }, commands, [.. journal]);

    private static Decision End(TransactionState next, TransactionStatus terminal, DateTimeOffset now, IEnumerable<JournalEntry> journal)
    {
        var committed = terminal == TransactionStatus.Committed;
        var entries = journal.Append(new(now, committed ? JournalKinds.Committed : JournalKinds.Aborted, Detail: committed ? null : next.Reason));
        return new(next with
        {
            Status = terminal,
            Outcome = committed ? TransactionOutcome.Commit : TransactionOutcome.Abort,
            Reason = committed ? null : next.Reason,
            StuckOn = null,
            NextWakeAt = null,
            UpdatedAt = now,
        }, [new Finish(terminal)], [.. entries]);
    }

    private static Decision Unchanged(TransactionState state) => new(state, [], []);
}
