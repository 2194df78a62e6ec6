using System.Collections.Immutable;
using System.Text.Json.Serialization;
using Treaty.Core.Serialization;

namespace Treaty.Core.Model;

/// <summary>What a client submitted: the immutable definition of one transaction.</summary>
/// <param name="Gid">Global transaction id, unique per coordinator.</param>
/// <param name="Protocol">The protocol that drives it.</param>
/// <param name="PayloadJson">Compact JSON text given to every branch call.</param>
/// <param name="Branches">The branches, in submission order.</param>
/// <param name="TimeoutMs">Time from submission: a transaction that has not decided by then aborts
/// (a saga before its pivot, TCC/2PC/3PC before their decision); a prepared message is checked
/// with its sender's <c>queryPrepared</c>.</param>
/// <param name="Retry">Default retry policy of every branch.</param>
public sealed record TransactionSpec(
    string Gid,
    Protocol Protocol,
    [property: JsonConverter(typeof(RawJsonConverter))] string PayloadJson,
    ImmutableArray<BranchSpec> Branches,
    long? TimeoutMs,
    RetryPolicy? Retry)
{
    /// <summary>URLs of the transaction's own operations (msg's <c>queryPrepared</c>); null when it has none.</summary>
    public ImmutableSortedDictionary<string, string>? Urls { get; init; }

    /// <summary>The URL of the transaction-level operation <paramref name="op"/>, or null.</summary>
    public string? UrlOf(string op) => Urls is not null && Urls.TryGetValue(op, out var url) ? url : null;
}

/// <summary>One participant branch.</summary>
/// <param name="Name">Unique within the transaction.</param>
/// <param name="Urls">Operation name (a saga's <c>action</c>, <c>compensate</c>; TCC's <c>try</c>,
/// <c>confirm</c>, <c>cancel</c>; ...) to URL.</param>
/// <param name="DependsOn">Names of the branches this one waits for. Never null once validated: an
/// absent list in a request gets its protocol's default (the saga: the previous branch).</param>
/// <param name="Pivot">Once a pivot succeeds the saga only moves forward (sagas only).</param>
/// <param name="TimeoutMs">Timeout of one call to this branch.</param>
/// <param name="Retry">Retry policy of this branch; falls back to the transaction's.</param>
public sealed record BranchSpec(
    string Name,
    ImmutableSortedDictionary<string, string> Urls,
    ImmutableArray<string> DependsOn,
    bool Pivot,
    long? TimeoutMs,
    RetryPolicy? Retry)
{
    /// <summary>The URL of <paramref name="op"/>, or null when the branch has none.</summary>
    public string? UrlOf(string op) => Urls.TryGetValue(op, out var url) ? url : null;
}
