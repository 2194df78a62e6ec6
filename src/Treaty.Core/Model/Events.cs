using System.Collections.Immutable;

namespace Treaty.Core.Model;

/// <summary>Something that happened to a transaction; the input of <c>Decide</c>.</summary>
public abstract record TransactionEvent;

/// <summary>The transaction was accepted.</summary>
public sealed record Submitted : TransactionEvent;

/// <summary>The engine (re)loaded the transaction from the store, after a restart or a lost lease.
/// Calls that were in flight then have an unknown outcome.</summary>
public sealed record Resumed : TransactionEvent;

/// <summary>A branch call came back (or failed to).</summary>
public sealed record BranchCompleted(int Branch, string Op, int Attempt, BranchOutcome Outcome) : TransactionEvent;

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
}

/// <summary>What the engine must do after persisting a decision.</summary>
public abstract record Command;

/// <summary>Call one operation of one branch.</summary>
public sealed record InvokeBranch(int Branch, string BranchName, string Op, string Url, int Attempt, TimeSpan Timeout) : Command;

/// <summary>The transaction reached a terminal status.</summary>
public sealed record Finish(TransactionStatus Status) : Command;

/// <summary>Something an operator must know (the transaction became stuck).</summary>
public sealed record Alert(string Kind, string Message) : Command;

/// <summary>One row of the append-only attempt/event log.</summary>
public sealed record JournalEntry(
    DateTimeOffset At,
    string Kind,
    string? Branch = null,
    string? Op = null,
    int? Attempt = null,
    int? StatusCode = null,
    string? Detail = null);

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
}

/// <summary>The result of one <c>Decide</c>: the next state, what to do, and what to log.</summary>
public sealed record Decision(TransactionState Next, ImmutableArray<Command> Commands, ImmutableArray<JournalEntry> Journal)
{
    public bool Changed(TransactionState previous) => !ReferenceEquals(previous, Next);
}
