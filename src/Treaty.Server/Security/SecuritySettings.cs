using System.Net;

namespace Treaty.Server.Security;

/// <summary>Start-time checks of the security settings (keys, binding, allowlist, limits).</summary>
internal static class SecuritySettings
{
    /// <summary>Adds every problem of the security settings to <paramref name="problems"/>.</summary>
    public static void Validate(TreatyServerOptions options, List<string> problems)
    {
        var ring = ApiKeyRing.From(options, problems);
        if (ring.IsEmpty && options.ApiKeys.Count == 0 && options.OperatorKeys.Count == 0
            && NonLoopbackUrl(options.Urls) is { } exposed)
        {
            problems.Add($"No API keys are configured, so the coordinator listens on loopback only, but Urls asks for '{exposed}'. " +
                "Give --api-key/--operator-key (or TREATY_API_KEYS/TREATY_OPERATOR_KEYS), or listen on 127.0.0.1, localhost or [::1].");
        }

        _ = ParticipantAllowlist.Parse(options.AllowedParticipants, problems);
        if (options.RateLimitPerSecond < 0)
        {
            problems.Add("RateLimitPerSecond must not be negative (0 turns the limit off).");
        }

        if (options.MaxBranchResultBytes is < 256 or > 16 * 1024 * 1024)
        {
            problems.Add("MaxBranchResultBytes must be between 256 bytes and 16 MiB.");
        }
    }

    /// <summary>The first of the ';'-separated <paramref name="urls"/> that is not a loopback address, or null.</summary>
    public static string? NonLoopbackUrl(string? urls)
    {
        foreach (var url in (urls ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!IsLoopbackUrl(url))
            {
                return url;
            }
        }

        return null;
    }

    /// <summary>True for an http(s) URL whose host is <c>localhost</c> or a loopback IP. Wildcards
    /// (<c>*</c>, <c>+</c>, <c>0.0.0.0</c>, <c>[::]</c>) and other names are not loopback.</summary>
    public static bool IsLoopbackUrl(string url) =>
        Uri.TryCreate(url, UriKind.Absolute, out var uri) && IsLoopbackHost(uri.Host);

    public static bool IsLoopbackHost(string host) =>
        string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
}
