using System.Collections.Immutable;
using System.Text.Json.Serialization;
using Treaty.Core.Serialization;

namespace Treaty.Core.Model;

/// <summary>Where a transaction stands. <see cref="Committed"/> and <see cref="Aborted"/> are terminal.</summary>
public enum TransactionStatus
{
    /// <summary>Two-phase message registered, not yet submitted.</summary>
    Prepared,
    /// <summary>Accepted, nothing started yet.</summary>
    Pending,
    /// <summary>Moving forward.</summary>
    Running,
    /// <summary>Compensating (rolling back).</summary>
    Aborting,
    /// <summary>Every action applied. Terminal.</summary>
    Committed,
    /// <summary>Every applied action compensated. Terminal.</summary>
    Aborted,
}

/// <summary>The state of one operation (an action or a compensation) of one branch.</summary>
public enum OpStatus
{
    /// <summary>Never called.</summary>
    NotStarted,
    /// <summary>A call is on its way; its outcome is not known yet.</summary>
    InFlight,
    /// <summary>The last call's outcome was unknown; another attempt is due at <see cref="OpState.NextAttemptAt"/>.</summary>
    Waiting,
    /// <summary>The participant answered 2xx.</summary>
    Succeeded,
    /// <summary>The participant answered a definitive 4xx: nothing was applied.</summary>
    Failed,
    /// <summary>The attempts ran out while the outcome stayed unknown: it may have been applied.</summary>
    Exhausted,
    /// <summary>Sent without waiting for the answer (presumed abort's rollbacks): the coordinator
    /// has forgotten it; a participant that missed it asks for the outcome.</summary>
    Sent,
}

/// <summary>What the coordinator decided: the outcome every participant must reach.</summary>
public enum TransactionOutcome
{
    /// <summary>Every branch's effect is made permanent (commit, confirm, doCommit; a saga past its pivot).</summary>
    Commit,
    /// <summary>Every branch's effect is undone (rollback, cancel, abort, compensate).</summary>
    Abort,
}

/// <summary>Why a transaction waits for an operator: the operation that ran out of attempts but may
/// never be abandoned.</summary>
/// <param name="Branch">The branch, or null for a transaction-level operation (msg's queryPrepared).</param>
/// <param name="Op">The operation.</param>
/// <param name="Attempts">Attempts made so far.</param>
/// <param name="LastStatusCode">HTTP status of the last answer, if any.</param>
/// <param name="LastError">The last attempt's error.</param>
public sealed record StuckCause(string? Branch, string Op, int Attempts, int? LastStatusCode, string? LastError)
{
    public override string ToString() =>
        $"{(Branch is null ? "" : Branch + ".")}{Op} failed {Attempts} times, last: {LastError ?? (LastStatusCode is { } code ? $"HTTP {code}" : "no answer")}";
}

public static class StatusExtensions
{
    public static bool IsTerminal(this TransactionStatus status) =>
        status is TransactionStatus.Committed or TransactionStatus.Aborted;

    public static string ToWire(this TransactionStatus status) => status switch
    {
        TransactionStatus.Prepared => "prepared",
        TransactionStatus.Pending => "pending",
        TransactionStatus.Running => "running",
        TransactionStatus.Aborting => "aborting",
        TransactionStatus.Committed => "committed",
        TransactionStatus.Aborted => "aborted",
        _ => throw new ArgumentOutOfRangeException(nameof(status)),
    };

    public static bool TryParseStatus(string? text, out TransactionStatus status)
    {
        foreach (var candidate in Enum.GetValues<TransactionStatus>())
        {
            if (string.Equals(candidate.ToWire(), text, StringComparison.Ordinal))
            {
                status = candidate;
                return true;
            }
        }

        status = default;
        return false;
    }

    public static string ToWire(this OpStatus status) => status switch
    {
        OpStatus.NotStarted => "not-started",
        OpStatus.InFlight => "in-flight",
        OpStatus.Waiting => "waiting",
        OpStatus.Succeeded => "succeeded",
        OpStatus.Failed => "failed",
        OpStatus.Exhausted => "exhausted",
        OpStatus.Sent => "sent",
        _ => throw new ArgumentOutOfRangeException(nameof(status)),
    };

    public static string ToWire(this TransactionOutcome outcome) => outcome switch
    {
        TransactionOutcome.Commit => "commit",
        TransactionOutcome.Abort => "abort",
        _ => throw new ArgumentOutOfRangeException(nameof(outcome)),
    };

    /// <summary>True when at least one call was made whose effect may have landed.</summary>
    public static bool MayHaveApplied(this OpState op) =>
        op.Status is OpStatus.Succeeded or OpStatus.Exhausted or OpStatus.InFlight
        || (op.Status == OpStatus.Waiting && op.Attempts > 0)
        || op.MaybeCalled;
}

/// <summary>One operation's progress.</summary>
/// <param name="Op">Operation name (<c>action</c>, <c>compensate</c>, ...).</param>
/// <param name="Status">Where it stands.</param>
/// <param name="Attempts">Calls made so far (the in-flight one included).</param>
/// <param name="BudgetBase">Value of <see cref="Attempts"/> when the retry budget last restarted
/// (an operator retry restarts it).</param>
/// <param name="NextAttemptAt">When a <see cref="OpStatus.Waiting"/> operation is due.</param>
/// <param name="LastStatusCode">HTTP status of the last answer, if any.</param>
/// <param name="LastError">Error text of the last failed attempt.</param>
/// <param name="FirstAttemptAt">When the first call started.</param>
/// <param name="LastAttemptAt">When the last call started.</param>
/// <param name="FinishedAt">When it reached a final outcome.</param>
/// <param name="ResultJson">The participant's JSON answer on success.</param>
public sealed record OpState(
    string Op,
    OpStatus Status,
    int Attempts,
    int BudgetBase,
    DateTimeOffset? NextAttemptAt,
    int? LastStatusCode,
    string? LastError,
    DateTimeOffset? FirstAttemptAt,
    DateTimeOffset? LastAttemptAt,
    DateTimeOffset? FinishedAt,
    [property: JsonConverter(typeof(RawJsonConverter))] string? ResultJson)
{
    public static OpState New(string op) =>
        new(op, OpStatus.NotStarted, 0, 0, null, null, null, null, null, null, null);

    /// <summary>
    /// A call of this operation may have left although no durable state recorded it: a saga's
    /// forward step does not wait for its write (<see cref="Decision.WriteAhead"/>), and the
    /// coordinator restarted before the write landed. Set on a <see cref="OpStatus.NotStarted"/>
    /// operation when the transaction resumes; it counts as possibly applied (an abort undoes it)
    /// until the operation is called again.
    /// </summary>
    public bool MaybeCalled { get; init; }

    /// <summary>Attempts made since the budget last restarted.</summary>
    [JsonIgnore]
    public int AttemptsInBudget => Attempts - BudgetBase;
}

/// <summary>One branch's progress: one <see cref="OpState"/> per operation of its protocol.</summary>
public sealed record BranchState(string Name, ImmutableArray<OpState> Ops)
{
    public OpState Op(string op)
    {
        foreach (var candidate in Ops)
        {
            if (candidate.Op == op)
            {
                return candidate;
            }
        }

        throw new KeyNotFoundException($"Branch '{Name}' has no operation '{op}'.");
    }

    /// <summary>The operation's state, or null when the branch has none of that name.</summary>
    public OpState? TryOp(string op)
    {
        foreach (var candidate in Ops)
        {
            if (candidate.Op == op)
            {
                return candidate;
            }
        }

        return null;
    }

    public BranchState With(OpState op)
    {
        for (var i = 0; i < Ops.Length; i++)
        {
            if (Ops[i].Op == op.Op)
            {
                return this with { Ops = Ops.SetItem(i, op) };
            }
        }

        throw new KeyNotFoundException($"Branch '{Name}' has no operation '{op.Op}'.");
    }
}

/// <summary>The whole durable state of one transaction: what the store keeps and <c>Decide</c> maps.</summary>
/// <param name="Spec">What was submitted.</param>
/// <param name="Fingerprint">Hash of the submitted definition (idempotent submit).</param>
/// <param name="Status">Where it stands.</param>
/// <param name="Reason">Why it aborted (or is aborting); null otherwise.</param>
/// <param name="CreatedAt">Submission time.</param>
/// <param name="UpdatedAt">Time of the last decision.</param>
/// <param name="Deadline">Submission time plus the transaction timeout, if one was set.</param>
/// <param name="NextWakeAt">When the engine must look at it again (a retry, the deadline, or the
/// watchdog of a call in flight); null only when terminal.</param>
/// <param name="Branches">Per-branch progress, in the order of <see cref="TransactionSpec.Branches"/>.</param>
/// <param name="Version">Incremented by every persisted decision (optimistic concurrency).</param>
public sealed record TransactionState(
    TransactionSpec Spec,
    string Fingerprint,
    TransactionStatus Status,
    string? Reason,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    DateTimeOffset? Deadline,
    DateTimeOffset? NextWakeAt,
    ImmutableArray<BranchState> Branches,
    long Version)
{
    private readonly ImmutableArray<OpState> _ops = [];

    /// <summary>The protocol phase: which operation the transaction drives now (one of its machine's
    /// declared phases, e.g. <c>prepare</c>, <c>commit</c>, <c>compensate</c>).</summary>
    public string Phase { get; init; } = "";

    /// <summary>What the coordinator decided, or null while undecided.</summary>
    public TransactionOutcome? Outcome { get; init; }

    /// <summary>Set while the transaction waits for an operator: the operation that ran out of
    /// attempts but may never be abandoned.</summary>
    public StuckCause? StuckOn { get; init; }

    /// <summary>
    /// How many of its writes (<see cref="Version"/> counts them all) the coordinator waited to be
    /// durable before a call left: the submit's, and every decision the protocol must not act on
    /// before it is on disk (a commit decision, a saga's next step). The protocols' cost in the
    /// textbooks' terms; a lazily written decision or presumed abort's unforced abort is not one.
    /// </summary>
    public int ForcedWrites { get; init; }

    /// <summary>A choreographed saga's reported-event bookkeeping; null for every other protocol.</summary>
    public ChoreographyState? Choreography { get; init; }

    /// <summary>The transaction's own operations, not any branch's (msg's <c>queryPrepared</c>).</summary>
    public ImmutableArray<OpState> Ops
    {
        get => _ops;
        init => _ops = value.IsDefault ? [] : value;
    }

    /// <summary>True while it waits for an operator (see <see cref="StuckOn"/>).</summary>
    [JsonIgnore]
    public bool Stuck => StuckOn is not null;

    [JsonIgnore]
    public string Gid => Spec.Gid;

    [JsonIgnore]
    public bool IsTerminal => Status.IsTerminal();

    /// <summary>The transaction-level operation <paramref name="op"/>, or null.</summary>
    public OpState? TransactionOp(string op)
    {
        foreach (var candidate in Ops)
        {
            if (candidate.Op == op)
            {
                return candidate;
            }
        }

        return null;
    }
}
