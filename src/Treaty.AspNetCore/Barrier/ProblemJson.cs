using System.Text;
using System.Text.Json;

namespace Treaty.AspNetCore.Barrier;

/// <summary>Writes RFC 9457 problem+json documents without reflection.</summary>
internal static class ProblemJson
{
    public static string Write(
        int status,
        string type,
        string title,
        string? detail,
        IReadOnlyDictionary<string, string[]>? errors = null,
        IEnumerable<KeyValuePair<string, string>>? extensions = null)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("type", type);
            writer.WriteString("title", title);
            writer.WriteNumber("status", status);
            if (detail is not null)
            {
                writer.WriteString("detail", detail);
            }

            if (errors is not null)
            {
                writer.WriteStartObject("errors");
                foreach (var (field, messages) in errors)
                {
                    writer.WriteStartArray(field);
                    foreach (var message in messages)
                    {
                        writer.WriteStringValue(message);
                    }

                    writer.WriteEndArray();
                }

                writer.WriteEndObject();
            }

            if (extensions is not null)
            {
                foreach (var (name, value) in extensions)
                {
                    writer.WriteString(name, value);
                }
            }

            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }
}
