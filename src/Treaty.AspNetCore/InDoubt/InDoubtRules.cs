namespace Treaty.AspNetCore.InDoubt;

/// <summary>How far a participant got in a commit protocol that can leave it in doubt.</summary>
internal enum PreparedStage
{
    /// <summary>2PC: it voted YES (prepare answered 2xx) and holds what it reserved until it hears the outcome.</summary>
    Prepared,

    /// <summary>3PC: it voted YES (canCommit answered 2xx) and has not heard preCommit.</summary>
    Voted,

    /// <summary>3PC: it acknowledged preCommit: every participant voted YES.</summary>
    PreCommitted,
}

/// <summary>What the coordinator said when asked about a transaction (<c>GET /api/v1/transactions/{gid}</c>).</summary>
internal enum CoordinatorAnswer
{
    /// <summary>No answer: connection refused, timeout, 5xx. The coordinator may be down or cut off.</summary>
    Unreachable,

    /// <summary>404: the coordinator has no record of the transaction.</summary>
    UnknownTransaction,

    /// <summary>The transaction exists and has not decided.</summary>
    Undecided,

    /// <summary>Its decision is commit (committing or committed).</summary>
    Commit,

    /// <summary>Its decision is abort (aborting or aborted).</summary>
    Abort,
}

/// <summary>What an in-doubt participant does now.</summary>
internal enum InDoubtAction
{
    /// <summary>Keep holding and ask again later.</summary>
    Wait,

    /// <summary>Run the branch's commit (2PC <c>commit</c>, 3PC <c>doCommit</c>) locally.</summary>
    Commit,

    /// <summary>Run the branch's rollback (2PC <c>rollback</c>, 3PC <c>abort</c>) locally.</summary>
    Abort,
}

/// <summary>
/// The decisions of a participant left in doubt (it voted YES and heard no outcome within its
/// timeout), as plain functions shared by the kit's resolver and the deterministic simulation.
/// <list type="bullet">
/// <item>2PC never decides alone: a participant follows the coordinator's decision, and waits
/// while the coordinator is undecided or unreachable (this is 2PC's blocking). Under presumed
/// abort a coordinator with no record of the transaction means abort.</item>
/// <item>3PC follows the coordinator's decision when it can get one, and waits while a reachable
/// coordinator is still deciding. When the coordinator cannot be reached it applies Skeen's
/// termination rule alone: after preCommit it commits, before preCommit it aborts. That is
/// non-blocking — and it is exactly what breaks atomicity under a partition: the coordinator,
/// missing this participant's acknowledgement, may abort while the participant commits.</item>
/// </list>
/// </summary>
internal static class InDoubtRules
{
    /// <summary>The stage a participant is in after <paramref name="op"/> answered 2xx, or null when <paramref name="op"/> leaves nothing in doubt.</summary>
    public static PreparedStage? StageAfter(string op) => op switch
    {
        "prepare" => PreparedStage.Prepared,
        "canCommit" => PreparedStage.Voted,
        "preCommit" => PreparedStage.PreCommitted,
        _ => null,
    };

    /// <summary>Whether <paramref name="op"/> ends a participant's doubt (it carries the outcome).</summary>
    public static bool Resolves(string op) => op is "commit" or "rollback" or "doCommit" or "abort";

    /// <summary>The operation that carries <paramref name="action"/> to a participant at <paramref name="stage"/>.</summary>
    public static string OperationFor(PreparedStage stage, InDoubtAction action) => (stage, action) switch
    {
        (PreparedStage.Prepared, InDoubtAction.Commit) => "commit",
        (PreparedStage.Prepared, InDoubtAction.Abort) => "rollback",
        (_, InDoubtAction.Commit) => "doCommit",
        (_, InDoubtAction.Abort) => "abort",
        _ => throw new ArgumentOutOfRangeException(nameof(action), action, "Waiting runs no operation."),
    };

    /// <summary>What a participant at <paramref name="stage"/> does, given the coordinator's answer.</summary>
    public static InDoubtAction Decide(PreparedStage stage, CoordinatorAnswer answer) => (stage, answer) switch
    {
        (_, CoordinatorAnswer.Commit) => InDoubtAction.Commit,
        (_, CoordinatorAnswer.Abort) => InDoubtAction.Abort,
        (_, CoordinatorAnswer.Undecided) => InDoubtAction.Wait,

        // 2PC, presumed abort: no record means no commit was ever decided. Unreachable: wait — a
        // 2PC participant never decides on its own.
        (PreparedStage.Prepared, CoordinatorAnswer.UnknownTransaction) => InDoubtAction.Abort,
        (PreparedStage.Prepared, _) => InDoubtAction.Wait,

        // 3PC's termination rule, applied alone (no coordinator to follow).
        (PreparedStage.Voted, _) => InDoubtAction.Abort,
        (PreparedStage.PreCommitted, _) => InDoubtAction.Commit,
        _ => throw new ArgumentOutOfRangeException(nameof(stage), stage, null),
    };

    /// <summary>
    /// What an HTTP answer of <c>GET /api/v1/transactions/{gid}</c> says before its body is read:
    /// null for a 2xx (read the view, <see cref="FromView"/>); <see cref="CoordinatorAnswer.UnknownTransaction"/>
    /// for a 404 that is the coordinator's own problem+json (<paramref name="isTreatyNotFound"/>);
    /// <see cref="CoordinatorAnswer.Unreachable"/> for anything else. A 404 from something that is
    /// not a Treaty coordinator (a wrong URL, a proxy) must not count as "no record": under presumed
    /// abort that would roll back every prepared branch the real coordinator may commit.
    /// </summary>
    public static CoordinatorAnswer? FromStatusCode(int statusCode, bool isTreatyNotFound) => statusCode switch
    {
        >= 200 and < 300 => null,
        404 when isTreatyNotFound => CoordinatorAnswer.UnknownTransaction,
        _ => CoordinatorAnswer.Unreachable,
    };

    /// <summary>
    /// Whether a decision taken for a participant at <paramref name="decidedAt"/> still applies now
    /// that it is at <paramref name="current"/> (null: no longer in doubt, its outcome arrived). A
    /// 3PC participant that decided to abort alone at <see cref="PreparedStage.Voted"/> must not
    /// abort once a preCommit has arrived meanwhile: the coordinator may be about to commit.
    /// </summary>
    public static bool StillApplies(PreparedStage decidedAt, PreparedStage? current) => current == decidedAt;

    /// <summary>
    /// How long to wait before asking again after <paramref name="checks"/> answers that left the
    /// participant in doubt: <paramref name="first"/> doubled per check, at most <paramref name="max"/>.
    /// No jitter: one participant asks about few transactions, and a fixed schedule is easier to
    /// reason about in an outage.
    /// </summary>
    public static TimeSpan NextCheckDelay(int checks, TimeSpan first, TimeSpan max)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(checks);
        if (first <= TimeSpan.Zero || max < first)
        {
            throw new ArgumentOutOfRangeException(nameof(first), first, "first must be positive and at most max.");
        }

        // 2^checks overflows long for large counts; past the cap the answer is max anyway.
        var doublings = Math.Min(checks, 40);
        var ticks = first.Ticks * Math.Pow(2, doublings);
        return ticks >= max.Ticks ? max : TimeSpan.FromTicks((long)ticks);
    }

    /// <summary>The stored form of <paramref name="stage"/> (the <c>stage</c> column of <c>treaty_prepared</c>).</summary>
    public static string ToColumn(PreparedStage stage) => stage switch
    {
        PreparedStage.Prepared => "prepared",
        PreparedStage.Voted => "voted",
        PreparedStage.PreCommitted => "pre-committed",
        _ => throw new ArgumentOutOfRangeException(nameof(stage), stage, null),
    };

    /// <summary>Parses the <c>stage</c> column.</summary>
    public static PreparedStage StageFromColumn(string value) => value switch
    {
        "prepared" => PreparedStage.Prepared,
        "voted" => PreparedStage.Voted,
        "pre-committed" => PreparedStage.PreCommitted,
        _ => throw new InvalidOperationException($"Unknown stage '{value}' in the prepared table."),
    };

    /// <summary>
    /// Reads the coordinator's view of a transaction: its <c>decision</c> field when set, else its
    /// terminal status, else undecided.
    /// </summary>
    public static CoordinatorAnswer FromView(string status, string? decision) => (decision, status) switch
    {
        ("commit", _) or (_, "committed") => CoordinatorAnswer.Commit,
        ("abort", _) or (_, "aborted") => CoordinatorAnswer.Abort,
        _ => CoordinatorAnswer.Undecided,
    };
}
