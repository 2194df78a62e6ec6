using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>
/// Builds a two-phase commit (presumed abort) and submits it. Every branch votes through
/// <c>prepare</c> at once (2xx: YES, a 4xx: NO); when all voted YES each branch is committed,
/// otherwise every branch that may have prepared is rolled back.
/// </summary>
/// <example>
/// <code>
/// var tx = await client.TwoPhaseCommit("transfer-7")
///     .Branch("debit", "http://bank-a/2pc/prepare", "http://bank-a/2pc/commit", "http://bank-a/2pc/rollback")
///     .Branch("credit", "http://bank-b/2pc/prepare", "http://bank-b/2pc/commit", "http://bank-b/2pc/rollback")
///     .SubmitAsync(wait: TimeSpan.FromSeconds(5), cancellationToken);
/// </code>
/// </example>
public sealed class TwoPhaseCommitBuilder : TransactionBuilder<TwoPhaseCommitBuilder>
{
    internal TwoPhaseCommitBuilder(TreatyClient? client, string? gid)
        : base(client, gid)
    {
    }

    /// <summary>Creates a builder that is not bound to a client: use <see cref="TransactionBuilder{TSelf}.Build"/> and submit it yourself.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public TwoPhaseCommitBuilder(string? gid = null)
        : this(null, gid)
    {
    }

    private protected override string Protocol => ProtocolNames.TwoPhaseCommit;

    private protected override string Noun => "two-phase commit";

    private protected override string FactoryName => nameof(TreatyClient.TwoPhaseCommit);

    /// <summary>Adds a branch.</summary>
    /// <param name="name">Unique branch name (letters, digits, '-', '_', '.', ':').</param>
    /// <param name="prepare">Absolute URL of the vote: 2xx is YES (the branch holds what it needs to commit), a 4xx is NO.</param>
    /// <param name="commit">Absolute URL that applies the prepared work.</param>
    /// <param name="rollback">Absolute URL that drops the prepared work.</param>
    /// <param name="timeout">How long one call of this branch may take.</param>
    /// <param name="retry">Retry settings of this branch, overriding the transaction's.</param>
    public TwoPhaseCommitBuilder Branch(string name, string prepare, string commit, string rollback, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        AddBranch(name, () => new BranchRequest
        {
            Prepare = RequireUrl(prepare, nameof(prepare)),
            Commit = RequireUrl(commit, nameof(commit)),
            Rollback = RequireUrl(rollback, nameof(rollback)),
        }, timeout, retry);

    /// <summary>Adds a branch with <see cref="Uri"/> operation addresses.</summary>
    /// <inheritdoc cref="Branch(string, string, string, string, TimeSpan?, RetrySettings?)" path="/param"/>
    public TwoPhaseCommitBuilder Branch(string name, Uri prepare, Uri commit, Uri rollback, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        Branch(name, RequireUrl(prepare, nameof(prepare)), RequireUrl(commit, nameof(commit)), RequireUrl(rollback, nameof(rollback)), timeout, retry);
}
