using System.Collections;
using Microsoft.Extensions.Logging;

namespace Treaty.Core.Diagnostics;

/// <summary>
/// The log scope of one transaction: a single <c>gid</c> property. Structured providers (JSON
/// console, OpenTelemetry) record it as a field on every line written inside the scope, so one
/// query on the gid finds every step of a transaction, whichever class wrote it.
/// </summary>
/// <param name="gid">The transaction's gid.</param>
public sealed class GidLogScope(string gid) : IReadOnlyList<KeyValuePair<string, object?>>
{
    /// <summary>The scope's property name.</summary>
    public const string Key = "gid";

    /// <summary>The transaction's gid.</summary>
    public string Gid { get; } = gid;

    /// <inheritdoc />
    public int Count => 1;

    /// <inheritdoc />
    public KeyValuePair<string, object?> this[int index] =>
        index == 0 ? new(Key, Gid) : throw new ArgumentOutOfRangeException(nameof(index));

    /// <inheritdoc />
    public IEnumerator<KeyValuePair<string, object?>> GetEnumerator()
    {
        yield return this[0];
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>How a text provider prints the scope (<c>gid:…</c>).</summary>
    public override string ToString() => Key + ":" + Gid;
}

/// <summary>Opens <see cref="GidLogScope"/>s.</summary>
public static class GidLogScopeExtensions
{
    // The gid whose scope is open on this async flow: the engine's entry points nest (a submit
    // starts the runner, which calls the invoker), and one "gid" scope per line is enough.
    private static readonly AsyncLocal<string?> Open = new();

    /// <summary>
    /// Every log written until the result is disposed carries <paramref name="gid"/> as <c>gid</c>.
    /// Null (nothing to dispose) when a scope of the same gid is already open on this flow.
    /// </summary>
    public static IDisposable? BeginGidScope(this ILogger logger, string gid)
    {
        ArgumentNullException.ThrowIfNull(logger);
        var outer = Open.Value;
        if (string.Equals(outer, gid, StringComparison.Ordinal))
        {
            return null;
        }

        var scope = logger.BeginScope(new GidLogScope(gid));
        Open.Value = gid;
        return new Closer(scope, outer);
    }

    private sealed class Closer(IDisposable? scope, string? outer) : IDisposable
    {
        public void Dispose()
        {
            Open.Value = outer;
            scope?.Dispose();
        }
    }
}
