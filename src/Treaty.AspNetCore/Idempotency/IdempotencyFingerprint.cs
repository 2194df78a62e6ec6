using System.Buffers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>
/// The fingerprint of a request: SHA-256 over the method, the route pattern, the path and query,
/// and a canonical hash of the body. Pure, so tests and the simulation can call it directly.
/// </summary>
internal static class IdempotencyFingerprint
{
    private const int MaxJsonDepth = 64;

    /// <summary>
    /// Computes the fingerprint. The route pattern names the endpoint; the path and query are
    /// included too, so the same key sent to <c>/orders/1</c> and <c>/orders/2</c> (one pattern)
    /// is a mismatch rather than a replay of the other order's answer.
    /// </summary>
    public static string Compute(string method, string? routePattern, string pathAndQuery, string? contentType, ReadOnlyMemory<byte> body)
    {
        Span<byte> bodyHash = stackalloc byte[SHA256.HashSizeInBytes];
        HashBody(contentType, body, bodyHash);

        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        AppendField(hash, method.ToUpperInvariant());
        AppendField(hash, routePattern ?? string.Empty);
        AppendField(hash, pathAndQuery);
        hash.AppendData(bodyHash);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>
    /// Hashes the body: a JSON body by its canonical form (object keys sorted, insignificant
    /// whitespace dropped, strings re-encoded), so two encodings of one document match;
    /// anything else (or JSON that does not parse) by its raw bytes.
    /// </summary>
    public static void HashBody(string? contentType, ReadOnlyMemory<byte> body, Span<byte> destination)
    {
        if (IsJson(contentType) && TryCanonicalizeJson(body, out var canonical))
        {
            SHA256.HashData(canonical.WrittenSpan, destination);
            return;
        }

        SHA256.HashData(body.Span, destination);
    }

    /// <summary>The canonical JSON of <paramref name="json"/>, or false when it is not JSON.</summary>
    public static bool TryCanonicalizeJson(ReadOnlyMemory<byte> json, out ArrayBufferWriter<byte> canonical)
    {
        canonical = new ArrayBufferWriter<byte>(Math.Max(16, json.Length));
        try
        {
            using var document = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = MaxJsonDepth });
            using var writer = new Utf8JsonWriter(canonical, new JsonWriterOptions { Indented = false, SkipValidation = true });
            Write(writer, document.RootElement);
            writer.Flush();
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            // well-formed JSON whose string escapes are not UTF-16 text (a lone "\ud800"): the raw bytes decide
            return false;
        }
    }

    private static bool IsJson(string? contentType)
    {
        if (string.IsNullOrEmpty(contentType))
        {
            return false;
        }

        var mediaType = contentType.Split(';', 2)[0].Trim();
        return mediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
            || mediaType.EndsWith("+json", StringComparison.OrdinalIgnoreCase);
    }

    private static void Write(Utf8JsonWriter writer, JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                writer.WriteStartObject();
                var properties = element.EnumerateObject().ToList();

                // ordinal over the decoded names; a stable sort keeps duplicate names in document order
                properties.Sort(static (a, b) => string.CompareOrdinal(a.Name, b.Name));
                foreach (var property in properties)
                {
                    writer.WritePropertyName(property.Name);
                    Write(writer, property.Value);
                }

                writer.WriteEndObject();
                break;
            case JsonValueKind.Array:
                writer.WriteStartArray();
                foreach (var item in element.EnumerateArray())
                {
                    Write(writer, item);
                }

                writer.WriteEndArray();
                break;
            case JsonValueKind.String:
                writer.WriteStringValue(element.GetString());
                break;
            case JsonValueKind.Number:
                // the literal as sent: 1.0 and 1 stay different, which is the conservative choice
                writer.WriteRawValue(element.GetRawText(), skipInputValidation: true);
                break;
            case JsonValueKind.True:
                writer.WriteBooleanValue(true);
                break;
            case JsonValueKind.False:
                writer.WriteBooleanValue(false);
                break;
            default:
                writer.WriteNullValue();
                break;
        }
    }

    private static void AppendField(IncrementalHash hash, string value)
    {
        // length-prefixed, so ("ab", "c") and ("a", "bc") hash differently
        var bytes = Encoding.UTF8.GetBytes(value);
        Span<byte> length = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(length, bytes.Length);
        hash.AppendData(length);
        hash.AppendData(bytes);
    }
}
