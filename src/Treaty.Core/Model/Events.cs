using System.Collections.Immutable;
using System.Text.Json;
using Treaty.Core.Serialization;

namespace Treaty.Core.Model;

/// <summary>Something that happened to a transaction; the input of <c>Decide</c>.</summary>
public abstract record TransactionEvent;

/// <summary>The transaction was accepted.</summary>
public sealed record Submitted : TransactionEvent;

/// <summary>The engine (re)loaded the transaction from the store, after a restart or a lost lease.
/// Calls that were in flight then have an unknown outcome.</summary>
/// <param name="By">The instance that resumed it (its lease owner name), for the timeline.</param>
/// <param name="Epoch">The epoch of its claim.</param>
public sealed record Resumed(string? By = null, long Epoch = 0) : TransactionEvent
{
    /// <summary>The journal entry's detail: who resumed it, under which claim (null when not said).</summary>
    public string? Detail => By is null ? null : $"by {By} at epoch {Epoch}";
}

/// <summary>A call of an operation came back (or failed to).</summary>
/// <param name="Branch">The branch's index, or null for a transaction-level operation (msg's queryPrepared).</param>
/// <param name="Op">The operation.</param>
/// <param name="Attempt">The attempt this answers; an answer for any other attempt is stale.</param>
/// <param name="Outcome">How the call ended.</param>
public sealed record OperationCompleted(int? Branch, string Op, int Attempt, BranchOutcome Outcome) : TransactionEvent;

/// <summary>The sender of a two-phase message committed its local transaction and asks for delivery
/// (<c>POST .../submit</c>).</summary>
public sealed record SenderCommitted : TransactionEvent;

/// <summary>The wake-up time the last decision asked for has come.</summary>
public sealed record TimerFired : TransactionEvent;

/// <summary>An operator asked to retry now (and restarted the retry budget).</summary>
public sealed record AdminRetry(string Actor) : TransactionEvent;

/// <summary>An operator asked to abort.</summary>
public sealed record AdminAbort(string Actor, string? Reason) : TransactionEvent;

/// <summary>How a branch call ended.</summary>
public enum OutcomeKind
{
    /// <summary>2xx: applied.</summary>
    Succeeded,
    /// <summary>Definitive business failure (4xx other than 408, 425, 429): nothing applied.</summary>
    Failed,
    /// <summary>Timeout, 408, 425, 429, 5xx, connection error: it may or may not have been applied.</summary>
    Unknown,
}

/// <summary>The outcome of one branch call, as data.</summary>
public sealed record BranchOutcome(OutcomeKind Kind, int? StatusCode, string? Error, string? ResultJson)
{
    /// <summary>The participant's answer as text, clipped for the timeline; null when there was none
    /// (or the invoker keeps none). Shown to operators, never interpreted.</summary>
    public string? Body { get; init; }

    /// <summary>How long the call took, measured by the engine; null when not measured.</summary>
    public TimeSpan? Duration { get; init; }

    public static BranchOutcome Success(int statusCode, string? resultJson) => new(OutcomeKind.Succeeded, statusCode, null, resultJson);

    public static BranchOutcome Failure(int statusCode, string? error) => new(OutcomeKind.Failed, statusCode, error, null);

    public static BranchOutcome Unknown(int? statusCode, string error) => new(OutcomeKind.Unknown, statusCode, error, null);

    /// <summary>Classifies an HTTP status per the branch call contract.</summary>
    public static OutcomeKind Classify(int statusCode) => statusCode switch
    {
        >= 200 and < 300 => OutcomeKind.Succeeded,
        408 or 425 or 429 => OutcomeKind.Unknown,
        >= 400 and < 500 => OutcomeKind.Failed,
        _ => OutcomeKind.Unknown,
    };

    /// <summary>
    /// The outcome of a participant's HTTP answer, per the branch call contract: a 2xx is a success
    /// whose body, if it is JSON, is the result (any other body is kept as a JSON string); a
    /// definitive 4xx is a failure; anything else (408, 425, 429, 5xx, 1xx, 3xx) is unknown. The
    /// error names the status and the body's <c>detail</c>, <c>title</c>, <c>error</c>,
    /// <c>message</c> or <c>reason</c>. Every invoker calls this one function, so the simulation
    /// runs the same classification as the HTTP invoker; only timeouts and refused connections are
    /// decided by the transport.
    /// </summary>
    /// <param name="statusCode">The HTTP status code.</param>
    /// <param name="body">The answer's body as text, or null when it had none (or was too large to keep).</param>
    public static BranchOutcome FromHttp(int statusCode, string? body) => Classify(statusCode) switch
    {
        OutcomeKind.Succeeded => Success(statusCode, AsJson(body)),
        OutcomeKind.Failed => Failure(statusCode, Describe(statusCode, body)),
        _ => Unknown(statusCode, Describe(statusCode, body)),
    };

    /// <summary>The body if it is JSON, else the body as a JSON string; null when empty.</summary>
    private static string? AsJson(string? body)
    {
        if (string.IsNullOrWhiteSpace(body))
        {
            return null;
        }

        try
        {
            using var document = JsonDocument.Parse(body);
            return body;
        }
        catch (JsonException)
        {
            return JsonSerializer.Serialize(body, TreatyJsonContext.Default.String);
        }
    }

    private static string Describe(int status, string? body)
    {
        if (!string.IsNullOrWhiteSpace(body))
        {
            try
            {
                using var document = JsonDocument.Parse(body);
                var root = document.RootElement;
                if (root.ValueKind == JsonValueKind.Object)
                {
                    foreach (var name in (ReadOnlySpan<string>)["detail", "title", "error", "message", "reason"])
                    {
                        if (root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String)
                        {
                            return $"HTTP {status}: {Clip(value.GetString()!)}";
                        }
                    }
                }
            }
            catch (JsonException)
            {
                return $"HTTP {status}: {Clip(body)}";
            }
        }

        return $"HTTP {status}";
    }

    private static string Clip(string text)
    {
        if (text.Length <= 300)
        {
            return text;
        }

        var end = char.IsHighSurrogate(text[299]) ? 299 : 300;
        return $"{text[..end]}… (truncated, {System.Text.Encoding.UTF8.GetByteCount(text)} bytes)";
    }
}

/// <summary>What the engine must do after persisting a decision.</summary>
public abstract record Command;

/// <summary>Call one operation and feed its outcome back as <see cref="OperationCompleted"/>.</summary>
/// <param name="Branch">The branch's index, or null for a transaction-level operation.</param>
/// <param name="BranchName">The branch's name, or null for a transaction-level operation.</param>
/// <param name="Op">The operation.</param>
/// <param name="Url">Where to call.</param>
/// <param name="Attempt">1 for the first call, then 2, 3, ...</param>
/// <param name="Timeout">How long to wait for the answer.</param>
public sealed record InvokeOperation(int? Branch, string? BranchName, string Op, string Url, int Attempt, TimeSpan Timeout) : Command;

/// <summary>
/// Call one operation without feeding its outcome back: the coordinator has forgotten the
/// transaction (presumed abort's rollbacks). The engine retries an unknown outcome with
/// <paramref name="Retry"/> while it runs; a participant that still misses it asks for the outcome.
/// </summary>
public sealed record NotifyOperation(int Branch, string BranchName, string Op, string Url, TimeSpan Timeout, RetryPolicy Retry) : Command;

/// <summary>The transaction reached a terminal status.</summary>
public sealed record Finish(TransactionStatus Status) : Command;

/// <summary>Something an operator must know (the transaction became stuck).</summary>
public sealed record Alert(string Kind, string Message) : Command;

/// <summary>One row of the append-only attempt/event log. For an answered attempt,
/// <c>DurationMs</c> is how long the call took and <c>Body</c> the participant's answer, clipped
/// (see <see cref="BodyClip"/>).</summary>
public sealed record JournalEntry(
    DateTimeOffset At,
    string Kind,
    string? Branch = null,
    string? Op = null,
    int? Attempt = null,
    int? StatusCode = null,
    string? Detail = null,
    long? DurationMs = null,
    string? Body = null);

/// <summary>Clips text kept for operators (the timeline's bodies) to a number of UTF-8 bytes.</summary>
public static class BodyClip
{
    /// <summary>Appended to a clipped body.</summary>
    public const string Marker = "…[clipped]";

    /// <summary>The text if its UTF-8 form fits in <paramref name="maxBytes"/>; else its longest prefix
    /// that fits (never splitting a character) followed by <see cref="Marker"/>. Null and empty stay null.
    /// <paramref name="maxBytes"/> 0 keeps nothing.</summary>
    public static string? Clip(string? text, int maxBytes)
    {
        if (string.IsNullOrEmpty(text) || maxBytes <= 0)
        {
            return null;
        }

        if (System.Text.Encoding.UTF8.GetMaxByteCount(text.Length) <= maxBytes || System.Text.Encoding.UTF8.GetByteCount(text) <= maxBytes)
        {
            return text;
        }

        var bytes = 0;
        var end = 0;
        while (end < text.Length)
        {
            var width = char.IsHighSurrogate(text[end]) && end + 1 < text.Length && char.IsLowSurrogate(text[end + 1]) ? 2 : 1;
            var size = System.Text.Encoding.UTF8.GetByteCount(text.AsSpan(end, width));
            if (bytes + size > maxBytes)
            {
                break;
            }

            bytes += size;
            end += width;
        }

        return text[..end] + Marker;
    }
}

/// <summary>The journal's kinds, as stored.</summary>
public static class JournalKinds
{
    public const string Submitted = "submitted";
    public const string Resumed = "resumed";
    public const string AttemptStarted = "attempt-started";
    public const string AttemptSucceeded = "attempt-succeeded";
    public const string AttemptFailed = "attempt-failed";
    public const string AttemptUnknown = "attempt-unknown";
    public const string Aborting = "aborting";
    public const string Committed = "committed";
    public const string Aborted = "aborted";
    public const string Stuck = "stuck";
    public const string OperatorRetry = "operator-retry";
    public const string OperatorAbort = "operator-abort";
    /// <summary>The coordinator decided to commit (the decision is durable in the same write).</summary>
    public const string Committing = "committing";
    /// <summary>A protocol moved to another phase (detail: the phase).</summary>
    public const string Phase = "phase";
    /// <summary>A participant's vote (2PC prepare, 3PC canCommit); detail <c>yes</c> or <c>no: why</c>.</summary>
    public const string Vote = "vote";
    /// <summary>A call sent without waiting for its answer (presumed abort's rollbacks).</summary>
    public const string Notified = "notified";
    /// <summary>A two-phase message was registered; it waits for its sender's submit.</summary>
    public const string Registered = "registered";
    /// <summary>The sender of a two-phase message submitted it (its local transaction committed).</summary>
    public const string SenderCommitted = "sender-committed";
    /// <summary>A service of a choreographed saga reported an event (branch: the service, op: the event's type).</summary>
    public const string Event = "event";
}

/// <summary>The result of one <c>Decide</c>: the next state, what to do, and what to log.</summary>
public sealed record Decision(TransactionState Next, ImmutableArray<Command> Commands, ImmutableArray<JournalEntry> Journal)
{
    /// <summary>
    /// True (the default): the decision must be durable before any of its commands runs. False only
    /// where the protocol says a write need not be forced (presumed abort: the rollbacks may leave
    /// before the abort is on disk, because a coordinator that restarts without a commit record
    /// presumes abort anyway).
    /// </summary>
    public bool WriteAhead { get; init; } = true;

    /// <summary>
    /// True: the engine answers the request that caused the decision only once it is durable, even
    /// when nothing leaves the coordinator on it (a reported choreography event: its reporter stops
    /// reporting once answered, so a crash must not take the event back).
    /// </summary>
    public bool Acknowledged { get; init; }

    public bool Changed(TransactionState previous) => !ReferenceEquals(previous, Next);
}
