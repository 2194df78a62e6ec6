using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>
/// Builds a three-phase commit and submits it. Every branch votes through <c>canCommit</c> at once
/// (2xx: YES, a 4xx: NO); when all voted YES each branch is told <c>preCommit</c>, then
/// <c>doCommit</c>; otherwise every branch is told <c>abort</c>.
/// </summary>
/// <example>
/// <code>
/// var tx = await client.ThreePhaseCommit("transfer-8")
///     .Branch("debit", bankA + "/3pc/can-commit", bankA + "/3pc/pre-commit", bankA + "/3pc/do-commit", bankA + "/3pc/abort")
///     .Branch("credit", bankB + "/3pc/can-commit", bankB + "/3pc/pre-commit", bankB + "/3pc/do-commit", bankB + "/3pc/abort")
///     .SubmitAsync(wait: TimeSpan.FromSeconds(5), cancellationToken);
/// </code>
/// </example>
public sealed class ThreePhaseCommitBuilder : TransactionBuilder<ThreePhaseCommitBuilder>
{
    internal ThreePhaseCommitBuilder(TreatyClient? client, string? gid)
        : base(client, gid)
    {
    }

    /// <summary>Creates a builder that is not bound to a client: use <see cref="TransactionBuilder{TSelf}.Build"/> and submit it yourself.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public ThreePhaseCommitBuilder(string? gid = null)
        : this(null, gid)
    {
    }

    private protected override string Protocol => ProtocolNames.ThreePhaseCommit;

    private protected override string Noun => "three-phase commit";

    private protected override string FactoryName => nameof(TreatyClient.ThreePhaseCommit);

    /// <summary>Adds a branch.</summary>
    /// <param name="name">Unique branch name (letters, digits, '-', '_', '.', ':').</param>
    /// <param name="canCommit">Absolute URL of the vote: 2xx is YES, a 4xx is NO.</param>
    /// <param name="preCommit">Absolute URL told that every branch voted YES.</param>
    /// <param name="doCommit">Absolute URL that commits.</param>
    /// <param name="abort">Absolute URL that aborts.</param>
    /// <param name="timeout">How long one call of this branch may take.</param>
    /// <param name="retry">Retry settings of this branch, overriding the transaction's.</param>
    public ThreePhaseCommitBuilder Branch(
        string name, string canCommit, string preCommit, string doCommit, string abort, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        AddBranch(name, () => new BranchRequest
        {
            CanCommit = RequireUrl(canCommit, nameof(canCommit)),
            PreCommit = RequireUrl(preCommit, nameof(preCommit)),
            DoCommit = RequireUrl(doCommit, nameof(doCommit)),
            Abort = RequireUrl(abort, nameof(abort)),
        }, timeout, retry);

    /// <summary>Adds a branch with <see cref="Uri"/> operation addresses.</summary>
    /// <inheritdoc cref="Branch(string, string, string, string, string, TimeSpan?, RetrySettings?)" path="/param"/>
    public ThreePhaseCommitBuilder Branch(
        string name, Uri canCommit, Uri preCommit, Uri doCommit, Uri abort, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        Branch(name, RequireUrl(canCommit, nameof(canCommit)), RequireUrl(preCommit, nameof(preCommit)),
            RequireUrl(doCommit, nameof(doCommit)), RequireUrl(abort, nameof(abort)), timeout, retry);
}
