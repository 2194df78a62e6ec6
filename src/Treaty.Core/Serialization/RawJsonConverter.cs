using System.Text.Json;
using System.Text.Json.Serialization;

namespace Treaty.Core.Serialization;

/// <summary>
/// Stores a string that already holds JSON as that JSON, not as an escaped string: smaller rows
/// and readable ones. The JSON literal <c>null</c> round-trips as the text "null", never as a
/// C# null.
/// </summary>
public sealed class RawJsonConverter : JsonConverter<string>
{
    public override bool HandleNull => true;

    public override string? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null)
        {
            return "null";
        }

        using var document = JsonDocument.ParseValue(ref reader);
        return document.RootElement.GetRawText();
    }

    public override void Write(Utf8JsonWriter writer, string? value, JsonSerializerOptions options)
    {
        if (value is null)
        {
            writer.WriteNullValue();
            return;
        }

        writer.WriteRawValue(value, skipInputValidation: false);
    }
}
