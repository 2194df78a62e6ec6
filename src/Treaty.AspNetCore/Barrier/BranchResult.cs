using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Treaty.AspNetCore.Barrier;

/// <summary>
/// A branch handler's answer: a success (2xx, a JSON body the coordinator stores as the branch
/// result) or a definitive business failure (a 4xx problem+json: nothing was applied). Both are
/// recorded by the barrier, so a duplicate call gets the same answer. A handler that cannot decide
/// (a dependency is down) throws instead: the transaction rolls back, nothing is recorded, the
/// coordinator sees 500 and retries.
/// </summary>
public sealed class BranchResult
{
    private const string EmptyObject = "{}";

    private BranchResult(int statusCode, string body)
    {
        StatusCode = statusCode;
        Body = body;
    }

    /// <summary>The HTTP status answered: 2xx for a success, a non-retryable 4xx for a definitive failure.</summary>
    public int StatusCode { get; }

    /// <summary>The JSON body answered (for a failure, a problem+json document).</summary>
    public string Body { get; }

    /// <summary>True for a 2xx answer: the handler's writes are committed with the barrier row.</summary>
    public bool IsSuccess => StatusCode is >= 200 and < 300;

    /// <summary><c>application/json</c> for a success, <c>application/problem+json</c> for a failure.</summary>
    public string ContentType => IsSuccess ? "application/json" : "application/problem+json";

    /// <summary>A 200 with an empty JSON object.</summary>
    public static BranchResult Ok() => new(200, EmptyObject);

    /// <summary>A 200 with <paramref name="value"/> serialized by <paramref name="typeInfo"/> (use a source-generated context).</summary>
    public static BranchResult Ok<T>(T value, JsonTypeInfo<T> typeInfo)
    {
        ArgumentNullException.ThrowIfNull(typeInfo);
        return new(200, JsonSerializer.Serialize(value, typeInfo));
    }

    /// <summary>A 200 with <paramref name="body"/> as it is.</summary>
    public static BranchResult Ok(JsonElement body) =>
        new(200, body.ValueKind == JsonValueKind.Undefined ? EmptyObject : body.GetRawText());

    /// <summary>
    /// A definitive business failure (insufficient funds, out of stock): a problem+json with
    /// <paramref name="statusCode"/>, which must be a 4xx the coordinator does not retry (not 408,
    /// 425 or 429). The handler's writes are rolled back; the answer is recorded and replayed.
    /// </summary>
    /// <param name="statusCode">400-499 except 408, 425 and 429; 409 or 422 suit most business refusals.</param>
    /// <param name="type">A stable URI naming the kind of failure.</param>
    /// <param name="title">A short, human-readable summary of the kind of failure.</param>
    /// <param name="detail">What happened in this case, or null.</param>
    public static BranchResult Fail(int statusCode, string type, string title, string? detail = null)
    {
        if (!IsDefinitiveFailure(statusCode))
        {
            throw new ArgumentOutOfRangeException(nameof(statusCode), statusCode,
                "A definitive failure is a 4xx other than 408, 425 and 429 (which the coordinator retries); throw for a failure that a retry may fix.");
        }

        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        ArgumentException.ThrowIfNullOrWhiteSpace(title);
        return new(statusCode, ProblemJson.Write(statusCode, type, title, detail));
    }

    /// <summary>Rebuilds a recorded answer.</summary>
    internal static BranchResult Stored(int statusCode, string body) => new(statusCode, body);

    internal static bool IsDefinitiveFailure(int statusCode) =>
        statusCode is >= 400 and < 500 and not 408 and not 425 and not 429;
}
