using System.Security.Cryptography;
using System.Text;

namespace Treaty.Server.Security;

/// <summary>What a key may do. An operator key may do everything a client key may.</summary>
internal enum KeyRole
{
    Client,
    Operator,
}

/// <summary>One configured key: its name (the audited actor) and the SHA-256 of its secret.</summary>
internal sealed record ApiKey(string Name, KeyRole Role, byte[] SecretHash);

/// <summary>
/// The configured keys. A presented key is hashed and compared with every configured hash in
/// constant time (<see cref="CryptographicOperations.FixedTimeEquals"/>), all of them every time,
/// so neither the position of a match nor a common prefix shows in the timing. Secrets are kept
/// only as hashes and never logged.
/// </summary>
internal sealed class ApiKeyRing
{
    /// <summary>Shortest accepted secret.</summary>
    public const int MinSecretLength = 16;

    private readonly ApiKey[] _keys;

    private ApiKeyRing(ApiKey[] keys) => _keys = keys;

    /// <summary>True when no key is configured: every request is accepted (loopback only).</summary>
    public bool IsEmpty => _keys.Length == 0;

    public IReadOnlyList<ApiKey> Keys => _keys;

    /// <summary>Reads the keys of <paramref name="options"/>; every problem goes to <paramref name="problems"/>
    /// (naming the key by position and rule, never by its secret).</summary>
    public static ApiKeyRing From(TreatyServerOptions options, List<string>? problems = null)
    {
        var keys = new List<ApiKey>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        Add(options.ApiKeys, KeyRole.Client, "api-key");
        Add(options.OperatorKeys, KeyRole.Operator, "operator-key");
        return new ApiKeyRing([.. keys]);

        void Add(IList<string> configured, KeyRole role, string what)
        {
            for (var i = 0; i < configured.Count; i++)
            {
                if (!TryParse(configured[i], role, out var key, out var error))
                {
                    problems?.Add($"{what} #{i + 1}: {error}");
                    continue;
                }

                if (!names.Add(key.Name))
                {
                    problems?.Add($"{what} #{i + 1}: the name '{key.Name}' is used by another key.");
                    continue;
                }

                keys.Add(key);
            }
        }
    }

    /// <summary>Parses <c>NAME:SECRET</c> or a bare secret (named <c>api-</c>/<c>operator-</c> and the first
    /// 8 hex digits of the secret's SHA-256).</summary>
    public static bool TryParse(string text, KeyRole role, out ApiKey key, out string error)
    {
        key = null!;
        text = text.Trim();
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        string name;
        string secret;
        if (colon >= 0)
        {
            name = text[..colon];
            secret = text[(colon + 1)..];
            if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            {
                error = "the name (before ':') must be 1 to 64 letters, digits, '-', '_' or '.'.";
                return false;
            }
        }
        else
        {
            secret = text;
            name = "";
        }

        if (secret.Length < MinSecretLength || string.IsNullOrWhiteSpace(secret) || secret.Any(char.IsWhiteSpace))
        {
            error = $"the secret must be at least {MinSecretLength} characters without spaces.";
            return false;
        }

        var hash = Hash(secret);
        if (name.Length == 0)
        {
            name = (role == KeyRole.Operator ? "operator-" : "api-") + Convert.ToHexStringLower(hash.AsSpan(0, 4));
        }

        key = new ApiKey(name, role, hash);
        error = "";
        return true;
    }

    /// <summary>The configured key whose secret is <paramref name="presented"/>, or null.</summary>
    public ApiKey? Match(string presented)
    {
        // A bearer token may be given as NAME:SECRET too (the form it was configured in).
        var hash = Hash(presented);
        var colon = presented.IndexOf(':', StringComparison.Ordinal);
        var secretOnly = colon >= 0 ? Hash(presented[(colon + 1)..]) : null;
        ApiKey? found = null;
        foreach (var key in _keys)
        {
            var equal = CryptographicOperations.FixedTimeEquals(hash, key.SecretHash);
            if (secretOnly is not null)
            {
                equal |= CryptographicOperations.FixedTimeEquals(secretOnly, key.SecretHash) && presented.AsSpan(0, colon).SequenceEqual(key.Name);
            }

            if (equal && found is null)
            {
                found = key;
            }
        }

        return found;
    }

    private static byte[] Hash(string secret) => SHA256.HashData(Encoding.UTF8.GetBytes(secret));
}
