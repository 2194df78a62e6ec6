using System.Text.Json;
using System.Text.Json.Serialization;

namespace Treaty.Core.Serialization;

/// <summary>
/// Stores a string that already holds JSON as that JSON, not as an escaped string: smaller rows
/// and readable ones.
/// </summary>
public sealed class RawJsonConverter : JsonConverter<string>
{
    public override string? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        using var document = JsonDocument.ParseValue(ref reader);
        return document.RootElement.GetRawText();
    }

    public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) =>
        writer.WriteRawValue(value, skipInputValidation: false);
}
