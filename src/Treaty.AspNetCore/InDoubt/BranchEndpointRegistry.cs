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

/// <summary>A mapped branch endpoint: its name (the pattern unless given), pattern, handler and how it runs.</summary>
internal sealed record BranchEndpoint(string Name, string Pattern, BranchHandler Handler, BranchEndpointKind Kind);

/// <summary>
/// The branch endpoints of this application, by name, filled by the map methods. The prepared
/// table records the name of the endpoint that voted, so the in-doubt resolver can run the outcome
/// with that endpoint's handler, in-process, after a restart. Names, not route patterns, because a
/// pattern mapped in a route group does not know its group's prefix. One instance per application
/// (a DI singleton), not a static.
/// </summary>
internal sealed class BranchEndpointRegistry
{
    private readonly ConcurrentDictionary<string, BranchEndpoint> _endpoints = new(StringComparer.Ordinal);

    /// <summary>Whether a prepared-transaction endpoint is mapped (the host then checks <c>max_prepared_transactions</c> at start).</summary>
    public bool HasPreparedTransactionEndpoints => _endpoints.Values.Any(e => e.Kind == BranchEndpointKind.PreparedTransaction);

    public void Register(BranchEndpoint endpoint)
    {
        if (!_endpoints.TryAdd(endpoint.Name, endpoint))
        {
            throw new InvalidOperationException(
                $"A Treaty branch endpoint named '{endpoint.Name}' is already mapped (pattern '{_endpoints[endpoint.Name].Pattern}'). " +
                "Names are unique in an application: map each pattern once (one handler can serve every op: switch on BranchContext.Op), " +
                "and give endpoints of route groups that share a relative pattern a name of their own (MapTreatyBranch(pattern, handler, name: \"payment\")).");
        }
    }

    public BranchEndpoint? Find(string name) => _endpoints.GetValueOrDefault(name);
}
