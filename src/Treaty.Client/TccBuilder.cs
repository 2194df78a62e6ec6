using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>
/// Builds a TCC (Try-Confirm/Cancel) transaction and submits it. Every branch's <c>try</c> runs at
/// once and reserves; when every try succeeded each branch is confirmed, otherwise every try that
/// may have reserved something is cancelled.
/// </summary>
/// <example>
/// <code>
/// var tx = await client.Tcc("order-42")
///     .WithPayload(order, MyJsonContext.Default.Order)
///     .Branch("wallet", "http://payment/tcc/try", "http://payment/tcc/confirm", "http://payment/tcc/cancel")
///     .Branch("stock", "http://inventory/tcc/try", "http://inventory/tcc/confirm", "http://inventory/tcc/cancel")
///     .SubmitAsync(wait: TimeSpan.FromSeconds(5), cancellationToken);
/// </code>
/// </example>
public sealed class TccBuilder : TransactionBuilder<TccBuilder>
{
    internal TccBuilder(TreatyClient? client, string? gid)
        : base(client, gid)
    {
    }

    /// <summary>Creates a builder that is not bound to a client: use <see cref="TransactionBuilder{TSelf}.Build"/> and submit it yourself.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public TccBuilder(string? gid = null)
        : this(null, gid)
    {
    }

    private protected override string Protocol => ProtocolNames.Tcc;

    private protected override string Noun => "TCC transaction";

    private protected override string FactoryName => nameof(TreatyClient.Tcc);

    /// <summary>Adds a branch.</summary>
    /// <param name="name">Unique branch name (letters, digits, '-', '_', '.', ':').</param>
    /// <param name="try">Absolute URL that reserves what the branch needs (2xx: reserved; a 4xx: refused).</param>
    /// <param name="confirm">Absolute URL that makes the reservation permanent.</param>
    /// <param name="cancel">Absolute URL that releases the reservation.</param>
    /// <param name="timeout">How long one call of this branch may take.</param>
    /// <param name="retry">Retry settings of this branch, overriding the transaction's.</param>
    public TccBuilder Branch(string name, string @try, string confirm, string cancel, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        AddBranch(name, () => new BranchRequest
        {
            Try = RequireUrl(@try, nameof(@try)),
            Confirm = RequireUrl(confirm, nameof(confirm)),
            Cancel = RequireUrl(cancel, nameof(cancel)),
        }, timeout, retry);

    /// <summary>Adds a branch with <see cref="Uri"/> operation addresses.</summary>
    /// <inheritdoc cref="Branch(string, string, string, string, TimeSpan?, RetrySettings?)" path="/param"/>
    public TccBuilder Branch(string name, Uri @try, Uri confirm, Uri cancel, TimeSpan? timeout = null, RetrySettings? retry = null) =>
        Branch(name, RequireUrl(@try, nameof(@try)), RequireUrl(confirm, nameof(confirm)), RequireUrl(cancel, nameof(cancel)), timeout, retry);
}
