using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Server.Security;

/// <summary>
/// The URLs the coordinator may call as participants (no SSRF). Without configured prefixes only
/// loopback is allowed (<c>127.0.0.0/8</c>, <c>[::1]</c>, <c>localhost</c>). Checked three times:
/// at submit (the URL), before every call (the URL again: the allowlist may have shrunk since), and
/// when the connection opens (<see cref="ConnectAsync"/>: the resolved address, whatever DNS says).
/// </summary>
internal sealed class ParticipantAllowlist
{
    /// <summary>Distinct URLs whose answer is remembered at most.</summary>
    internal const int RememberedUrls = 4096;

    private readonly Uri[] _prefixes;
    // The prefixes never change while the process runs, and a coordinator calls the same few
    // participant URLs over and over (a 3-step saga checks nine: its six operation URLs at submit,
    // then each action before its call): each is parsed once, not every time.
    private readonly ConcurrentDictionary<string, Checked> _checked = new(StringComparer.Ordinal);

    public ParticipantAllowlist(IEnumerable<Uri> prefixes, Func<string, CancellationToken, Task<IPAddress[]>>? resolve = null)
    {
        _prefixes = [.. prefixes];
        Resolve = resolve ?? Dns.GetHostAddressesAsync;
    }

    /// <summary>True when no prefix is configured and only loopback may be called.</summary>
    public bool LoopbackOnly => _prefixes.Length == 0;

    /// <summary>The DNS lookup used when connecting (replaceable by tests).</summary>
    public Func<string, CancellationToken, Task<IPAddress[]>> Resolve { get; }

    public static ParticipantAllowlist From(TreatyServerOptions options) => new(Parse(options.AllowedParticipants, null));

    /// <summary>Parses the configured prefixes; a problem per bad one.</summary>
    public static List<Uri> Parse(IEnumerable<string> prefixes, List<string>? problems)
    {
        var result = new List<Uri>();
        foreach (var text in prefixes)
        {
            if (Uri.TryCreate(text.Trim(), UriKind.Absolute, out var uri)
                && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps)
                && uri.UserInfo.Length == 0 && uri.Query.Length == 0 && uri.Fragment.Length == 0
                && uri.Host.Length > 0)
            {
                result.Add(uri);
            }
            else
            {
                problems?.Add($"AllowedParticipants: '{text}' is not an http(s) URL prefix (scheme, host, optional port and path; no user, query or fragment).");
            }
        }

        return result;
    }

    /// <summary>True when <paramref name="url"/> may be called.</summary>
    public bool IsAllowed(string url) => Check(url).Allowed;

    /// <summary>True when <paramref name="url"/> may be called; then <paramref name="uri"/> is it,
    /// parsed (one instance per distinct URL, shared: a <see cref="Uri"/> is immutable).</summary>
    public bool IsAllowed(string url, [NotNullWhen(true)] out Uri? uri)
    {
        var answer = Check(url);
        uri = answer.Uri;
        return answer.Allowed;
    }

    private Checked Check(string url)
    {
        if (_checked.TryGetValue(url, out var known))
        {
            return known;
        }

        var uri = Uri.TryCreate(url, UriKind.Absolute, out var parsed) ? parsed : null;
        var answer = new Checked(uri, uri is not null && Allows(uri));
        if (_checked.Count < RememberedUrls)
        {
            _checked.TryAdd(url, answer);
        }

        return answer;
    }

    private bool Allows(Uri uri)
    {
        if ((uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps) || uri.UserInfo.Length > 0)
        {
            return false;
        }

        if (LoopbackOnly)
        {
            return SecuritySettings.IsLoopbackHost(uri.Host);
        }

        foreach (var prefix in _prefixes)
        {
            if (string.Equals(prefix.Scheme, uri.Scheme, StringComparison.OrdinalIgnoreCase)
                && string.Equals(prefix.IdnHost, uri.IdnHost, StringComparison.OrdinalIgnoreCase)
                && prefix.Port == uri.Port
                && PathMatches(prefix.AbsolutePath, uri.AbsolutePath))
            {
                return true;
            }
        }

        return false;
    }

    private readonly record struct Checked(Uri? Uri, bool Allowed);

    /// <summary>"/api" covers "/api" and "/api/...", not "/apix"; "/" covers every path.</summary>
    private static bool PathMatches(string prefix, string path) =>
        prefix == "/"
        || string.Equals(prefix, path, StringComparison.Ordinal)
        || path.StartsWith(prefix.EndsWith('/') ? prefix : prefix + "/", StringComparison.Ordinal);

    /// <summary>Every operation URL of <paramref name="spec"/> outside the allowlist, named like the request's fields.</summary>
    public IReadOnlyList<ValidationError> Check(TransactionSpec spec)
    {
        var errors = new List<ValidationError>();
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            foreach (var (op, url) in spec.Branches[i].Urls)
            {
                if (!IsAllowed(url))
                {
                    errors.Add(new($"branches[{i}].{op}", Refusal(url)));
                }
            }
        }

        foreach (var (op, url) in spec.Urls ?? System.Collections.Immutable.ImmutableSortedDictionary<string, string>.Empty)
        {
            if (!IsAllowed(url))
            {
                errors.Add(new(op, Refusal(url)));
            }
        }

        return errors;
    }

    private string Refusal(string url) => LoopbackOnly
        ? $"'{Clip(url)}' is not a loopback URL; this coordinator calls only loopback participants (see --allow-participant)."
        : $"'{Clip(url)}' is outside the participant allowlist (see --allow-participant).";

    private static string Clip(string url) => url.Length <= 200 ? url : url[..200] + "…";

    /// <summary>True when a connection to <paramref name="address"/>, found for <paramref name="host"/>, is allowed:
    /// loopback addresses under the default; otherwise an address a prefix names literally, or any
    /// address of a host name a prefix names.</summary>
    public bool IsAllowedAddress(string host, IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (LoopbackOnly)
        {
            return IPAddress.IsLoopback(address);
        }

        host = host.Trim('[', ']');
        foreach (var prefix in _prefixes)
        {
            var prefixHost = prefix.IdnHost.Trim('[', ']');
            if (IPAddress.TryParse(prefixHost, out var literal))
            {
                if (literal.Equals(address))
                {
                    return true;
                }
            }
            else if (string.Equals(prefixHost, host, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The branch invoker's <see cref="SocketsHttpHandler.ConnectCallback"/>: resolves the host itself
    /// and connects only to allowed addresses, so a name that points somewhere else (or is made to,
    /// between the submit-time check and the call) is never reached.
    /// </summary>
    public async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var host = context.DnsEndPoint.Host;
        var addresses = IPAddress.TryParse(host.Trim('[', ']'), out var literal)
            ? [literal]
            : await Resolve(host, cancellationToken);
        var allowed = addresses.Where(a => IsAllowedAddress(host, a)).ToArray();
        if (allowed.Length == 0)
        {
            throw new HttpRequestException(HttpRequestError.ConnectionError,
                $"Refused to connect to '{host}': it resolves to no address the participant allowlist permits.");
        }

        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(allowed, context.DnsEndPoint.Port, cancellationToken);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
