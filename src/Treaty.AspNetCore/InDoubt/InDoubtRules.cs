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
