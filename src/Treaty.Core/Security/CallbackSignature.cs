using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Treaty.Core.Security;

/// <summary>
/// The <c>Treaty-Signature</c> of a branch call: <c>t=&lt;unix seconds&gt;,v1=&lt;hex HMAC-SHA256 of "&lt;t&gt;." + body&gt;</c>.
/// Pure functions: the time is an argument.
/// </summary>
public static class CallbackSignature
{
    /// <summary>The header that carries the signature.</summary>
    public const string HeaderName = "Treaty-Signature";

    /// <summary>How old a signature may be (and how far in the future) before it is refused.</summary>
    public static readonly TimeSpan Tolerance = TimeSpan.FromMinutes(5);

    /// <summary>The header value for <paramref name="body"/> signed at <paramref name="now"/>.</summary>
    public static string Sign(ReadOnlySpan<byte> secret, ReadOnlySpan<byte> body, DateTimeOffset now)
    {
        var t = now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        return $"t={t},v1={Convert.ToHexStringLower(Mac(secret, t, body))}";
    }

    /// <summary>Whether <paramref name="header"/> is a valid signature of <paramref name="body"/> at <paramref name="now"/>.</summary>
    public static SignatureCheck Verify(ReadOnlySpan<byte> secret, string? header, ReadOnlySpan<byte> body, DateTimeOffset now)
    {
        if (string.IsNullOrEmpty(header))
        {
            return SignatureCheck.Missing;
        }

        string? t = null;
        var candidates = new List<string>(1);
        foreach (var part in header.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (part.StartsWith("t=", StringComparison.Ordinal))
            {
                t = part[2..];
            }
            else if (part.StartsWith("v1=", StringComparison.Ordinal))
            {
                candidates.Add(part[3..]);
            }
        }

        if (t is null || candidates.Count == 0 || !long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out var seconds))
        {
            return SignatureCheck.Malformed;
        }

        var signedAt = DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(seconds, 0, 253_402_300_799));
        if ((now - signedAt).Duration() > Tolerance)
        {
            return SignatureCheck.Expired;
        }

        var expected = Mac(secret, t, body);
        foreach (var candidate in candidates)
        {
            byte[] given;
            try
            {
                given = Convert.FromHexString(candidate);
            }
            catch (FormatException)
            {
                continue;
            }

            if (CryptographicOperations.FixedTimeEquals(given, expected))
            {
                return SignatureCheck.Valid;
            }
        }

        return SignatureCheck.Mismatch;
    }

    private static byte[] Mac(ReadOnlySpan<byte> secret, string t, ReadOnlySpan<byte> body)
    {
        // Incremental, so the body (up to the request limit, on every signed call) is not copied
        // into a "<t>." + body buffer first.
        using var hmac = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, secret);
        hmac.AppendData(Encoding.ASCII.GetBytes(t + "."));
        hmac.AppendData(body);
        return hmac.GetHashAndReset();
    }
}

/// <summary>The outcome of <see cref="CallbackSignature.Verify"/>.</summary>
public enum SignatureCheck
{
    Valid,
    Missing,
    Malformed,
    Expired,
    Mismatch,
}
