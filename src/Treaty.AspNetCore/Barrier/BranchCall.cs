using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Treaty.AspNetCore.Barrier;

/// <summary>One branch call as the coordinator made it (DESIGN.md, "Branch call contract").</summary>
internal sealed record BranchCall(string Gid, string Branch, string Op, JsonElement Payload);

/// <summary>
/// Reads the branch call envelope: the JSON body <c>{gid, branch, op, payload}</c>, with the
/// <c>Treaty-Gid</c>, <c>Treaty-Branch</c> and <c>Treaty-Op</c> headers standing in for a field
/// the body lacks. A field given both ways must agree: a call whose body and headers disagree is
/// not one the barrier can key safely.
/// </summary>
internal static class BranchCallReader
{
    /// <summary>Longest gid, branch or op accepted (the barrier's key columns).</summary>
    public const int MaxFieldLength = 256;

    private static readonly JsonElement NullPayload = JsonDocument.Parse("null").RootElement.Clone();

    public static async Task<(BranchCall? Call, IReadOnlyDictionary<string, string[]>? Errors)> ReadAsync(
        HttpRequest request,
        CancellationToken cancellationToken)
    {
        JsonElement root;
        try
        {
            using var document = await JsonDocument.ParseAsync(request.Body, default, cancellationToken);
            root = document.RootElement.Clone();
        }
        catch (JsonException)
        {
            return (null, Error("body", "The body is not JSON; a branch call is {\"gid\", \"branch\", \"op\", \"payload\"}."));
        }

        if (root.ValueKind != JsonValueKind.Object)
        {
            return (null, Error("body", "The body must be a JSON object {\"gid\", \"branch\", \"op\", \"payload\"}."));
        }

        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var gid = Field(root, request.Headers, "gid", "Treaty-Gid", errors);
        var branch = Field(root, request.Headers, "branch", "Treaty-Branch", errors);
        var op = Field(root, request.Headers, "op", "Treaty-Op", errors);
        if (op is not null && !BarrierRules.IsKnown(op))
        {
            errors["op"] = [$"'{op}' is not a Treaty operation; expected one of {string.Join(", ", BarrierRules.KnownOps)}."];
        }

        if (errors.Count > 0)
        {
            return (null, errors);
        }

        var payload = root.TryGetProperty("payload", out var given) ? given : NullPayload;
        return (new BranchCall(gid!, branch!, op!, payload), null);
    }

    private static string? Field(JsonElement root, IHeaderDictionary headers, string name, string header, Dictionary<string, string[]> errors)
    {
        string? fromBody = null;
        if (root.TryGetProperty(name, out var property))
        {
            if (property.ValueKind != JsonValueKind.String)
            {
                errors[name] = [$"'{name}' must be a string."];
                return null;
            }

            try
            {
                fromBody = property.GetString();
            }
            catch (InvalidOperationException)
            {
                // a lone surrogate escape ("\ud800"): valid JSON, but no text to key the barrier on
                errors[name] = [$"'{name}' is not valid Unicode text."];
                return null;
            }
        }

        var headerValues = headers[header];
        if (headerValues.Count > 1)
        {
            errors[name] = [$"The {header} header is given more than once."];
            return null;
        }

        var fromHeader = headerValues.Count == 1 ? headerValues[0] : null;
        var value = string.IsNullOrEmpty(fromBody) ? fromHeader : fromBody;
        if (string.IsNullOrEmpty(value))
        {
            errors[name] = [$"'{name}' is required (in the body, or the {header} header)."];
            return null;
        }

        if (value.Length > MaxFieldLength)
        {
            errors[name] = [$"'{name}' is longer than {MaxFieldLength} characters."];
            return null;
        }

        if (!string.IsNullOrEmpty(fromBody) && !string.IsNullOrEmpty(fromHeader) && !string.Equals(fromBody, fromHeader, StringComparison.Ordinal))
        {
            errors[name] = [$"The body's '{name}' and the {header} header differ."];
            return null;
        }

        return value;
    }

    private static Dictionary<string, string[]> Error(string field, string message) =>
        new(StringComparer.Ordinal) { [field] = [message] };
}
