using System.Text.RegularExpressions;
using Treaty.Server.Security;

namespace Treaty.Server.DeadLetters;

/// <summary>A service whose dead letters the coordinator shows: its name on the dashboard and its base URL.</summary>
internal sealed partial record DeadLetterSource(string Name, Uri BaseUrl)
{
    /// <summary>The service's list (<c>MapTreatyDeadLetters</c> in Treaty.Messaging).</summary>
    public Uri ListUrl => new(BaseUrl, "treaty/dead-letters");

    /// <summary>The replay of dead letter <paramref name="id"/>.</summary>
    public Uri ReplayUrl(long id) => new(BaseUrl, $"treaty/dead-letters/{id}/replay");

    /// <summary>
    /// Parses <see cref="TreatyServerOptions.DeadLetterSources"/> (<c>NAME=URL</c>); a problem for each bad
    /// one: a name that is not a short word or is given twice, a URL that is not http(s), a URL
    /// outside the participant allowlist, or any source without a callback secret to sign with.
    /// </summary>
    public static List<DeadLetterSource> Parse(TreatyServerOptions options, List<string>? problems)
    {
        var sources = new List<DeadLetterSource>();
        if (options.DeadLetterSources.Count == 0)
        {
            return sources;
        }

        if (options.CallbackSecret is null)
        {
            problems?.Add("DeadLetterSources need CallbackSecret (--callback-secret): the coordinator signs its dead-letter requests with it, and services answer only signed ones.");
        }

        if (options.DeadLetterSourceTimeout <= TimeSpan.Zero || options.DeadLetterSourceTimeout > TimeSpan.FromMinutes(5))
        {
            problems?.Add("DeadLetterSourceTimeout must be positive and at most 5 minutes.");
        }

        var allowlist = ParticipantAllowlist.From(options);
        foreach (var text in options.DeadLetterSources)
        {
            var equals = text.IndexOf('=', StringComparison.Ordinal);
            var name = equals > 0 ? text[..equals].Trim() : "";
            var url = equals > 0 ? text[(equals + 1)..].Trim() : "";
            if (!NamePattern().IsMatch(name))
            {
                problems?.Add($"DeadLetterSources: '{Clip(text)}' must be NAME=URL, NAME a word of letters, digits, '-', '_' or '.' (at most 64).");
                continue;
            }

            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps)
                || uri.UserInfo.Length > 0 || uri.Query.Length > 0 || uri.Fragment.Length > 0)
            {
                problems?.Add($"DeadLetterSources: '{name}' needs an http(s) base URL without user, query or fragment.");
                continue;
            }

            var source = new DeadLetterSource(name, uri.AbsolutePath.EndsWith('/') ? uri : new Uri(uri + "/"));
            if (!allowlist.IsAllowed(source.ListUrl.ToString()))
            {
                problems?.Add(allowlist.LoopbackOnly
                    ? $"DeadLetterSources: '{name}' ({Clip(url)}) is not a loopback URL; the coordinator calls only loopback services unless --allow-participant names it."
                    : $"DeadLetterSources: '{name}' ({Clip(url)}) is outside the participant allowlist (--allow-participant).");
                continue;
            }

            if (sources.Any(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase)))
            {
                problems?.Add($"DeadLetterSources: '{name}' is given twice.");
                continue;
            }

            sources.Add(source);
        }

        return sources;
    }

    private static string Clip(string text) => text.Length <= 200 ? text : text[..200] + "…";

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();
}
