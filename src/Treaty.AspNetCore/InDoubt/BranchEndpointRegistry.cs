using System.Collections.Concurrent;
using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>How an endpoint runs its branch operations.</summary>
internal enum BranchEndpointKind
{
    /// <summary><see cref="BarrierEndpointRouteBuilderExtensions.MapTreatyBranch"/>: the handler runs every op through the barrier.</summary>
    Barrier,

    /// <summary>
    /// <see cref="PreparedTransactions.PreparedTransactionEndpointRouteBuilderExtensions.MapTreatyPreparedTransactionBranch"/>:
    /// the handler runs prepare inside a PostgreSQL prepared transaction; commit and rollback are
    /// <c>COMMIT PREPARED</c> and <c>ROLLBACK PREPARED</c>.
    /// </summary>
    PreparedTransaction,
}

/// <summary>A mapped branch endpoint: its route pattern, its handler and how it runs.</summary>
internal sealed record BranchEndpoint(string Pattern, BranchHandler Handler, BranchEndpointKind Kind);

/// <summary>
/// The branch endpoints of this application, by route pattern, filled by the map methods. The
/// prepared table records the pattern of the endpoint that voted, so the in-doubt resolver can run
/// the outcome with that endpoint's handler, in-process, after a restart. One instance per
/// application (a DI singleton), not a static.
/// </summary>
internal sealed class BranchEndpointRegistry
{
    private readonly ConcurrentDictionary<string, BranchEndpoint> _endpoints = new(StringComparer.Ordinal);

    /// <summary>Whether a prepared-transaction endpoint is mapped (the host then checks <c>max_prepared_transactions</c> at start).</summary>
    public bool HasPreparedTransactionEndpoints => _endpoints.Values.Any(e => e.Kind == BranchEndpointKind.PreparedTransaction);

    public void Register(BranchEndpoint endpoint)
    {
        if (!_endpoints.TryAdd(endpoint.Pattern, endpoint))
        {
            throw new InvalidOperationException(
                $"A Treaty branch endpoint is already mapped on '{endpoint.Pattern}'. Map each pattern once (one handler can serve every op: switch on BranchContext.Op).");
        }
    }

    public BranchEndpoint? Find(string pattern) => _endpoints.GetValueOrDefault(pattern);
}
