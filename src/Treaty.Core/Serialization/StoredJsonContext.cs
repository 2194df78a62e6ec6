using System.Text.Json;
using System.Text.Json.Serialization;
using Treaty.Core.Model;

namespace Treaty.Core.Serialization;

/// <summary>
/// The stored progress (<see cref="StoredStateCodec.Progress"/>): the wire context's names, but a
/// field at its type's default (a null, a zero, the first member of an enum) is left out, and UTC
/// times are ticks rather than ISO text. The source-generated reader passes its type's default for a
/// missing constructor parameter or init-only property, so leaving a default out loses nothing
/// (<c>StoredStateCodecTests</c> round-trips every field, set and at its default). It reads the
/// older, longer form too.
/// </summary>
[JsonSourceGenerationOptions(
    JsonSerializerDefaults.Web,
    UseStringEnumConverter = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingDefault,
    Converters = [typeof(UtcTicksConverter)])]
[JsonSerializable(typeof(TransactionState))]
internal sealed partial class StoredJsonContext : JsonSerializerContext;

/// <summary>
/// A UTC time as its ticks (a number: 18 digits where ISO text takes 35 characters); a time with
/// another offset (the coordinator's clock is UTC, but a state is kept exactly as given) stays ISO
/// text, offset included. Reads both.
/// </summary>
internal sealed class UtcTicksConverter : JsonConverter<DateTimeOffset>
{
    public override DateTimeOffset Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType == JsonTokenType.Number
            ? new DateTimeOffset(reader.GetInt64(), TimeSpan.Zero)
            : reader.GetDateTimeOffset();

    public override void Write(Utf8JsonWriter writer, DateTimeOffset value, JsonSerializerOptions options)
    {
        if (value.Offset == TimeSpan.Zero)
        {
            writer.WriteNumberValue(value.UtcTicks);
        }
        else
        {
            writer.WriteStringValue(value);
        }
    }
}
