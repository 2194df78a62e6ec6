namespace Treaty.AspNetCore.Barrier;

/// <summary>What the barrier does with one incoming branch call.</summary>
internal enum BarrierDecision
{
    /// <summary>First delivery of this op: run the handler and record its answer.</summary>
    RunHandler,

    /// <summary>This (gid, branch, op) was answered before: send the stored answer, run nothing.</summary>
    ReplayStored,

    /// <summary>A compensation whose forward op never took effect: record it and succeed without running the handler.</summary>
    NullCompensation,

    /// <summary>A forward op arriving after its compensation: record it and refuse without running the handler.</summary>
    SkipHanging,

    /// <summary>
    /// An outcome op (confirm/cancel, commit/rollback, doCommit/abort) arriving after the opposite
    /// outcome took effect here: refuse without running the handler and record nothing. No correct
    /// coordinator asks for both; it happens when a 3PC participant applied the termination rule
    /// alone during a partition (it committed, the coordinator aborted), the "heuristic" outcome of
    /// XA. The coordinator retries the op until an operator looks: the inconsistency is reported,
    /// never papered over.
    /// </summary>
    Conflict,
}

/// <summary>How a barrier row came to be; stored in the <c>outcome</c> column.</summary>
internal enum BarrierOutcome
{
    /// <summary>The handler ran and answered 2xx: its writes were committed with the row.</summary>
    Applied,

    /// <summary>The handler ran and answered a definitive 4xx: its writes were rolled back, the row kept.</summary>
    Failed,

    /// <summary>A compensation with nothing to undo; the handler did not run.</summary>
    NullCompensation,

    /// <summary>A forward op that came after its compensation; the handler did not run.</summary>
    SkippedHanging,
}

/// <summary>The role an operation name plays for the barrier.</summary>
internal enum BarrierOpKind
{
    /// <summary>An op that a compensation undoes (action, try, prepare, canCommit, preCommit): guarded against hanging.</summary>
    Forward,

    /// <summary>An op that undoes forward ops (compensate, cancel, rollback, abort): null when they never took effect.</summary>
    Compensation,

    /// <summary>An op nothing undoes (confirm, commit, doCommit): only deduplicated.</summary>
    Final,
}

/// <summary>One row of the barrier table for a (gid, branch), as the rules need it.</summary>
internal readonly record struct BarrierRecord(string Op, BarrierOutcome Outcome);

/// <summary>
/// The barrier's decisions as plain functions of the rows already recorded for one (gid, branch)
/// and the incoming op; the SQL code and the deterministic simulation both call them. This is
/// DTM's branch barrier generalised to every Treaty protocol: saga action/compensate, tcc
/// try/confirm/cancel, 2pc prepare/commit/rollback, 3pc canCommit/preCommit/doCommit/abort and msg
/// action (which has no compensation, so it is only deduplicated in practice).
/// </summary>
internal static class BarrierRules
{
    /// <summary>Every operation name a branch call may carry.</summary>
    public static readonly IReadOnlyList<string> KnownOps =
    [
        "action", "compensate",
        "try", "confirm", "cancel",
        "prepare", "commit", "rollback",
        "canCommit", "preCommit", "doCommit", "abort",
    ];

    /// <summary>Whether <paramref name="op"/> is an operation of some Treaty protocol (case-sensitive, as on the wire).</summary>
    public static bool IsKnown(string op) => KindOf(op) is not null;

    /// <summary>The role of <paramref name="op"/>, or null for a name no protocol uses.</summary>
    public static BarrierOpKind? KindOf(string op) => op switch
    {
        "action" or "try" or "prepare" or "canCommit" or "preCommit" => BarrierOpKind.Forward,
        "compensate" or "cancel" or "rollback" or "abort" => BarrierOpKind.Compensation,
        "confirm" or "commit" or "doCommit" => BarrierOpKind.Final,
        _ => null,
    };

    /// <summary>The forward ops that compensation <paramref name="op"/> undoes.</summary>
    public static IReadOnlyList<string> ForwardOpsOf(string op) => op switch
    {
        "compensate" => ["action"],
        "cancel" => ["try"],
        "rollback" => ["prepare"],
        "abort" => ["canCommit", "preCommit"],
        _ => [],
    };

    /// <summary>The compensation that undoes forward op <paramref name="op"/>, or null.</summary>
    public static string? CompensationOf(string op) => op switch
    {
        "action" => "compensate",
        "try" => "cancel",
        "prepare" => "rollback",
        "canCommit" or "preCommit" => "abort",
        _ => null,
    };

    /// <summary>
    /// The outcome op that ends a branch the other way from <paramref name="op"/> (confirm and
    /// cancel, commit and rollback, doCommit and abort), or null for an op that is not an outcome.
    /// </summary>
    public static string? OppositeOutcomeOf(string op) => op switch
    {
        "confirm" => "cancel",
        "cancel" => "confirm",
        "commit" => "rollback",
        "rollback" => "commit",
        "doCommit" => "abort",
        "abort" => "doCommit",
        _ => null,
    };

    /// <summary>
    /// Decides what to do with <paramref name="op"/> given the rows already recorded for its
    /// (gid, branch). The caller holds the (gid, branch) lock, so nothing changes the rows between
    /// this decision and the write that follows it.
    /// </summary>
    public static BarrierDecision Decide(IReadOnlyCollection<BarrierRecord> existing, string op)
    {
        foreach (var record in existing)
        {
            if (string.Equals(record.Op, op, StringComparison.Ordinal))
            {
                return BarrierDecision.ReplayStored;
            }
        }

        // A recorded opposite outcome (applied, or a null compensation, which also ended the branch)
        // means this branch already went the other way: applying this one too would break atomicity.
        var opposite = OppositeOutcomeOf(op);
        foreach (var record in existing)
        {
            if (string.Equals(record.Op, opposite, StringComparison.Ordinal)
                && record.Outcome is BarrierOutcome.Applied or BarrierOutcome.NullCompensation)
            {
                return BarrierDecision.Conflict;
            }
        }

        switch (KindOf(op))
        {
            case BarrierOpKind.Compensation:
                // Only a forward op that answered 2xx changed anything; a definitive failure rolled
                // its writes back, and one that never arrived did nothing. Either way there is
                // nothing to undo, and the recorded compensation keeps a late forward op out.
                var forward = ForwardOpsOf(op);
                foreach (var record in existing)
                {
                    if (record.Outcome == BarrierOutcome.Applied && Contains(forward, record.Op))
                    {
                        return BarrierDecision.RunHandler;
                    }
                }

                return BarrierDecision.NullCompensation;

            case BarrierOpKind.Forward:
                var compensation = CompensationOf(op);
                foreach (var record in existing)
                {
                    if (string.Equals(record.Op, compensation, StringComparison.Ordinal))
                    {
                        return BarrierDecision.SkipHanging;
                    }
                }

                return BarrierDecision.RunHandler;

            default:
                return BarrierDecision.RunHandler;
        }
    }

    /// <summary>
    /// Whether an answer is recorded (and so replayed to duplicates). A forward op's definitive
    /// failure is: it promised that nothing was applied, and a duplicate must hear the same. A
    /// compensation or a final op can never fail for good — the coordinator retries it — so its
    /// 4xx is not recorded: the next attempt runs the handler again.
    /// </summary>
    public static bool Records(string op, BarrierOutcome outcome) =>
        outcome != BarrierOutcome.Failed || KindOf(op) == BarrierOpKind.Forward;

    /// <summary>The outcome stored for a call decided as <paramref name="decision"/> that answered <paramref name="statusCode"/>.</summary>
    public static BarrierOutcome OutcomeOf(BarrierDecision decision, int statusCode) => decision switch
    {
        BarrierDecision.RunHandler => statusCode is >= 200 and < 300 ? BarrierOutcome.Applied : BarrierOutcome.Failed,
        BarrierDecision.NullCompensation => BarrierOutcome.NullCompensation,
        BarrierDecision.SkipHanging => BarrierOutcome.SkippedHanging,
        _ => throw new ArgumentOutOfRangeException(nameof(decision), decision, "A replayed or conflicting call records nothing."),
    };

    /// <summary>The stored form of <paramref name="outcome"/>.</summary>
    public static string ToColumn(BarrierOutcome outcome) => outcome switch
    {
        BarrierOutcome.Applied => "applied",
        BarrierOutcome.Failed => "failed",
        BarrierOutcome.NullCompensation => "null-compensation",
        BarrierOutcome.SkippedHanging => "skipped-hanging",
        _ => throw new ArgumentOutOfRangeException(nameof(outcome), outcome, null),
    };

    /// <summary>Parses the <c>outcome</c> column.</summary>
    public static BarrierOutcome FromColumn(string value) => value switch
    {
        "applied" => BarrierOutcome.Applied,
        "failed" => BarrierOutcome.Failed,
        "null-compensation" => BarrierOutcome.NullCompensation,
        "skipped-hanging" => BarrierOutcome.SkippedHanging,
        _ => throw new InvalidOperationException($"Unknown barrier outcome '{value}' in the barrier table."),
    };

    private static bool Contains(IReadOnlyList<string> ops, string op)
    {
        foreach (var candidate in ops)
        {
            if (string.Equals(candidate, op, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}
