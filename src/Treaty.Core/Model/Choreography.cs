using System.Collections.Immutable;
using System.Text.Json.Serialization;
using Treaty.Core.Serialization;

namespace Treaty.Core.Model;

/// <summary>How a reported event ends a choreographed saga.</summary>
public enum ChoreographyOutcome
{
    /// <summary>The saga completed: the transaction is committed.</summary>
    Completed,
    /// <summary>The saga's compensations finished: the transaction is aborted.</summary>
    Compensated,
    /// <summary>The saga failed without (or beyond) compensation: the transaction is aborted.</summary>
    Failed,
}

/// <summary>
/// One event a service of a choreographed saga reports to the coordinator. The coordinator only
/// records it: it never calls a participant of a choreography.
/// </summary>
/// <param name="MessageId">The event's id; a second report of the same id is ignored.</param>
/// <param name="Type">What happened (<c>order.created</c>, <c>payment.failed</c>, ...); never interpreted.</param>
/// <param name="Service">The service that emitted it.</param>
/// <param name="CorrelationId">The saga's gid.</param>
/// <param name="ReportedAt">The service's own time, kept for the timeline; the coordinator's receive time is authoritative.</param>
/// <param name="PayloadJson">The event's payload as compact JSON, already clipped; null when none.</param>
/// <param name="Outcome">Set on the event that ends the saga.</param>
/// <param name="TimeoutMs">How long until the next event is expected; null for the coordinator's default.</param>
public sealed record ChoreographyEvent(
    string MessageId,
    string Type,
    string Service,
    string CorrelationId,
    DateTimeOffset? ReportedAt,
    string? PayloadJson,
    ChoreographyOutcome? Outcome,
    long? TimeoutMs);

/// <summary>A service reported an event of a choreographed saga.</summary>
public sealed record EventReported(ChoreographyEvent Event) : TransactionEvent;

/// <summary>What a choreographed saga's state keeps beyond the shared fields.</summary>
/// <param name="MessageIds">Every message id recorded so far, in arrival order (duplicates are ignored by it).</param>
/// <param name="LastEventAt">When the coordinator received the last event that moved the saga (or an operator retry restarted the wait).</param>
/// <param name="TimeoutMs">How long after <paramref name="LastEventAt"/> the next event is due.</param>
/// <param name="LastType">The last event's type, for the stuck message.</param>
/// <param name="LastService">The last event's service, for the stuck message.</param>
public sealed record ChoreographyState(
    ImmutableArray<string> MessageIds,
    DateTimeOffset LastEventAt,
    long TimeoutMs,
    string? LastType,
    string? LastService)
{
    /// <summary>When the saga is stuck unless another event comes.</summary>
    [JsonIgnore]
    public DateTimeOffset DueBy => LastEventAt.AddMilliseconds(TimeoutMs);
}

/// <summary>Wire names of <see cref="ChoreographyOutcome"/>.</summary>
public static class ChoreographyOutcomes
{
    public const string Completed = "completed";
    public const string Compensated = "compensated";
    public const string Failed = "failed";

    public static string ToWire(this ChoreographyOutcome outcome) => outcome switch
    {
        ChoreographyOutcome.Completed => Completed,
        ChoreographyOutcome.Compensated => Compensated,
        ChoreographyOutcome.Failed => Failed,
        _ => throw new ArgumentOutOfRangeException(nameof(outcome)),
    };

    public static bool TryParse(string? text, out ChoreographyOutcome outcome)
    {
        switch (text)
        {
            case Completed: outcome = ChoreographyOutcome.Completed; return true;
            case Compensated: outcome = ChoreographyOutcome.Compensated; return true;
            case Failed: outcome = ChoreographyOutcome.Failed; return true;
            default: outcome = default; return false;
        }
    }
}
