using System.Globalization;
using System.Text.Json;
using Treaty.Core.Model;
using Treaty.Core.Serialization;

namespace Treaty.Server.Security;

/// <summary>
/// What is stored of a participant answer larger than <see cref="TreatyServerOptions.MaxBranchResultBytes"/>:
/// a success keeps a note instead of its result (a clipped JSON document would not be JSON, and a
/// partial result could be mistaken for the whole); a failure keeps the first 300 characters of
/// its body and how much there was. The outcome itself (success, failure, unknown) counts as usual.
/// </summary>
internal static class StoredBodyCap
{
    public const int ErrorChars = 300;

    public static BranchOutcome Clipped(int status, string prefix, long? contentLength, int limit)
    {
        var size = contentLength is { } length ? length.ToString(CultureInfo.InvariantCulture) : "more than " + limit.ToString(CultureInfo.InvariantCulture);
        return BranchOutcome.Classify(status) switch
        {
            OutcomeKind.Succeeded => BranchOutcome.Success(status, Note(size, limit)),
            OutcomeKind.Failed => BranchOutcome.Failure(status, $"HTTP {status}: {Clip(prefix)}… (truncated, {size} bytes)"),
            _ => BranchOutcome.Unknown(status, $"HTTP {status}: {Clip(prefix)}… (truncated, {size} bytes)"),
        };
    }

    /// <summary>The result stored for an oversized success: <c>{"truncated":true,"bytes":"N","limit":L,"note":"..."}</c>.</summary>
    internal static string Note(string size, int limit)
    {
        var note = $"The participant answered {size} bytes; results over {limit} bytes (--max-stored-body) are not stored.";
        return "{\"truncated\":true,\"bytes\":" + JsonSerializer.Serialize(size, TreatyJsonContext.Default.String)
            + ",\"limit\":" + limit.ToString(CultureInfo.InvariantCulture)
            + ",\"note\":" + JsonSerializer.Serialize(note, TreatyJsonContext.Default.String) + "}";
    }

    private static string Clip(string text)
    {
        var end = Math.Min(text.Length, ErrorChars);
        if (end > 0 && end < text.Length && char.IsHighSurrogate(text[end - 1]))
        {
            end--;
        }

        return text[..end];
    }
}
