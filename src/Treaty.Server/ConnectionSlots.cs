using System.Collections.Concurrent;

namespace Treaty.Server;

/// <summary>
/// At most <c>max</c> calls at once to one participant origin (scheme, host and port as the URL
/// spells them). A call waits here for a slot before anything of its request is built, so that
/// thousands of transactions waiting on a busy participant each hold a small waiter rather than a
/// whole HTTP request, its span and its client's state (<c>treaty bench --in-flight</c>). The
/// client's own <see cref="SocketsHttpHandler.MaxConnectionsPerServer"/> is the same number, so a
/// call that has its slot also has a connection.
/// </summary>
/// <remarks>One entry per origin ever called, like the client's own connection pools: the
/// participants the allowlist lets through.</remarks>
internal sealed class ConnectionSlots(int max)
{
    private readonly ConcurrentDictionary<string, SemaphoreSlim> _origins = new(StringComparer.Ordinal);

    /// <summary>The slots of <paramref name="url"/>'s origin: take one (<see cref="SemaphoreSlim.Wait(int)"/>
    /// or <see cref="SemaphoreSlim.WaitAsync(CancellationToken)"/>) before the call, give it back once after.</summary>
    public SemaphoreSlim For(string url)
    {
        var origin = Origin(url);
        var lookup = _origins.GetAlternateLookup<ReadOnlySpan<char>>();
        return lookup.TryGetValue(origin, out var slots) ? slots : _origins.GetOrAdd(origin.ToString(), _ => new SemaphoreSlim(max, max));
    }

    /// <summary><c>scheme://authority</c> of an absolute URL: up to the first '/', '?' or '#' after "://".</summary>
    internal static ReadOnlySpan<char> Origin(string url)
    {
        var start = url.IndexOf("://", StringComparison.Ordinal);
        if (start < 0)
        {
            return url;
        }

        var end = url.AsSpan(start + 3).IndexOfAny('/', '?', '#');
        return end < 0 ? url : url.AsSpan(0, start + 3 + end);
    }
}
