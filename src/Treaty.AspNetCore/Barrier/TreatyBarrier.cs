namespace Treaty.AspNetCore.Barrier;

/// <summary>The names the barrier puts on the wire.</summary>
public static class TreatyBarrier
{
    /// <summary>
    /// Response header saying what the barrier did: <c>executed</c> (the handler ran),
    /// <c>replayed</c> (a duplicate got the first answer), <c>null-compensation</c>,
    /// <c>skipped-hanging</c> or <c>conflict</c> (the handler did not run).
    /// </summary>
    public const string OutcomeHeader = "Treaty-Barrier";

    /// <summary>
    /// problem+json <c>type</c> of the 409 answered to a forward operation (action, try, prepare,
    /// canCommit, preCommit) that arrives after its compensation: nothing was applied, and a
    /// definitive 4xx tells the coordinator exactly that, where a 2xx would claim an effect that
    /// does not exist.
    /// </summary>
    public const string AlreadyCompensatedType = BranchBarrier.AlreadyCompensatedType;

    /// <summary>
    /// problem+json <c>type</c> of the 409 answered to an outcome operation (confirm/cancel,
    /// commit/rollback, doCommit/abort) that arrives after the opposite outcome took effect here —
    /// for instance a 3PC participant that committed alone by the termination rule and then hears
    /// the coordinator's abort. Nothing is applied or recorded; the coordinator keeps retrying and
    /// marks the transaction stuck, for an operator.
    /// </summary>
    public const string OutcomeConflictType = BranchBarrier.OutcomeConflictType;

    internal static string HeaderValue(BarrierDecision decision) => decision switch
    {
        BarrierDecision.RunHandler => "executed",
        BarrierDecision.ReplayStored => "replayed",
        BarrierDecision.NullCompensation => "null-compensation",
        BarrierDecision.SkipHanging => "skipped-hanging",
        BarrierDecision.Conflict => "conflict",
        _ => throw new ArgumentOutOfRangeException(nameof(decision), decision, null),
    };
}
