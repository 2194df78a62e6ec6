using Treaty.Core.Model;

namespace Treaty.Core.Engine;

/// <summary>One call to a participant, per the branch call contract.</summary>
/// <param name="Gid">Transaction id.</param>
/// <param name="Branch">Branch name, or null for a transaction-level operation (msg's queryPrepared).</param>
/// <param name="Op">Operation name.</param>
/// <param name="Url">Where to call.</param>
/// <param name="Attempt">1 for the first call, then 2, 3, ...</param>
/// <param name="PayloadJson">The transaction's payload.</param>
/// <param name="Timeout">How long to wait for an answer.</param>
public sealed record BranchCall(string Gid, string? Branch, string Op, string Url, int Attempt, string PayloadJson, TimeSpan Timeout)
{
    /// <summary>The same on every retry of this operation, so the participant applies it at most once.</summary>
    public string IdempotencyKey => Branch is null ? $"{Gid}/{Op}" : $"{Gid}/{Branch}/{Op}";

    /// <summary>
    /// When the engine started this attempt, by its clock (the decision's time). A call can leave
    /// later than that: a saga's forward step sends it while its write is still on its way.
    /// </summary>
    public DateTimeOffset? StartedAt { get; init; }
}

/// <summary>Calls participants. Never throws for a participant's failure: every outcome is data.</summary>
public interface IBranchInvoker
{
    Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken);
}
