using System.Collections.Concurrent;

namespace Treaty.Core.Contracts;

/// <summary>
/// One string per distinct participant URL among the transactions a process holds: most
/// transactions name the same few endpoints, and thousands in flight would otherwise each keep
/// their own copies. Bounded: past <see cref="Capacity"/> distinct URLs (gids in the URLs, say)
/// a URL is kept as given.
/// </summary>
internal static class UrlPool
{
    /// <summary>Distinct URLs kept at most.</summary>
    public const int Capacity = 4096;

    private static readonly ConcurrentDictionary<string, string> Urls = new(StringComparer.Ordinal);

    /// <summary>The pooled string equal to <paramref name="url"/>, or <paramref name="url"/> itself.</summary>
    public static string Intern(string url)
    {
        if (Urls.TryGetValue(url, out var pooled))
        {
            return pooled;
        }

        return Urls.Count < Capacity ? Urls.GetOrAdd(url, url) : url;
    }
}
