using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Client;

/// <summary>
/// Builds an orchestrated saga step by step and submits it. Steps run in the order they are added
/// unless <c>dependsOn</c> says otherwise; the coordinator validates the whole definition.
/// </summary>
/// <example>
/// <code>
/// var tx = await client.Saga("checkout-42")
///     .WithPayload(order, MyJsonContext.Default.Order)
///     .Step("payment", action: "http://payment/reserve", compensate: "http://payment/refund")
///     .Step("confirm", action: "http://order/confirm", pivot: true)
///     .WithRetry(5, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(10))
///     .SubmitAsync(wait: TimeSpan.FromSeconds(5), cancellationToken);
/// </code>
/// </example>
public sealed class SagaBuilder : TransactionBuilder<SagaBuilder>
{
    internal SagaBuilder(TreatyClient? client, string? gid)
        : base(client, gid)
    {
    }

    /// <summary>Creates a builder that is not bound to a client: use <see cref="TransactionBuilder{TSelf}.Build"/> and submit it yourself.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public SagaBuilder(string? gid = null)
        : this(null, gid)
    {
    }

    private protected override string Protocol => ProtocolNames.Saga;

    private protected override string Noun => "saga";

    private protected override string BranchNoun => "step";

    private protected override string FactoryName => nameof(TreatyClient.Saga);

    /// <summary>Adds a step.</summary>
    /// <param name="name">Unique branch name (letters, digits, '-', '_', '.', ':').</param>
    /// <param name="action">Absolute URL of the forward operation.</param>
    /// <param name="compensate">Absolute URL that undoes the action; required before the pivot.</param>
    /// <param name="dependsOn">Steps that must succeed first. Null: the previous step (sequential);
    /// empty: none (starts at once, in parallel with other such steps).</param>
    /// <param name="pivot">The point of no return: once it succeeds the saga only moves forward.</param>
    /// <param name="timeout">How long one call of this step may take.</param>
    /// <param name="retry">Retry settings of this step, overriding the transaction's.</param>
    public SagaBuilder Step(
        string name,
        string action,
        string? compensate = null,
        IEnumerable<string>? dependsOn = null,
        bool pivot = false,
        TimeSpan? timeout = null,
        RetrySettings? retry = null) =>
        AddBranch(name, () => new BranchRequest
        {
            Action = RequireUrl(action, nameof(action)),
            Compensate = compensate,
            DependsOn = dependsOn is null ? null : [.. dependsOn],
            Pivot = pivot ? true : null,
        }, timeout, retry);

    /// <summary>Adds a step with <see cref="Uri"/> operation addresses.</summary>
    /// <inheritdoc cref="Step(string, string, string?, IEnumerable{string}?, bool, TimeSpan?, RetrySettings?)" path="/param"/>
    public SagaBuilder Step(
        string name,
        Uri action,
        Uri? compensate = null,
        IEnumerable<string>? dependsOn = null,
        bool pivot = false,
        TimeSpan? timeout = null,
        RetrySettings? retry = null)
    {
        ArgumentNullException.ThrowIfNull(action);
        return Step(name, action.AbsoluteUri, compensate?.AbsoluteUri, dependsOn, pivot, timeout, retry);
    }
}
