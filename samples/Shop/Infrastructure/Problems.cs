using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Shop.Infrastructure;

/// <summary>Problem+json answers of the Shop services, with stable <c>type</c> URIs.</summary>
internal static class Problems
{
    private const string Base = "https://treaty.dev/problems/shop/";

    public const string ContentType = "application/problem+json";

    public const string InsufficientFunds = Base + "insufficient-funds";
    public const string OverLimit = Base + "over-limit";
    public const string UnknownCustomer = Base + "unknown-customer";
    public const string OutOfStock = Base + "out-of-stock";
    public const string UnknownSku = Base + "unknown-sku";
    public const string OrderState = Base + "order-state";
    public const string RowLocked = Base + "row-locked";
    public const string InjectedFault = Base + "injected-fault";

    public static IResult Validation(string field, string message) =>
        Validation(new Dictionary<string, string[]>(StringComparer.Ordinal) { [field] = [message] });

    public static IResult Validation(IDictionary<string, string[]> errors) =>
        Results.ValidationProblem(errors, detail: "One or more fields are invalid: " + string.Join(", ", errors.Keys) + ".",
            type: ProblemTypes.Validation, title: "Invalid request");

    public static IResult NotFound(string detail) =>
        Results.Problem(detail, statusCode: StatusCodes.Status404NotFound, title: "Not found", type: ProblemTypes.NotFound);

    public static IResult Of(int status, string type, string title, string? detail) =>
        Results.Problem(detail, statusCode: status, title: title, type: type);
}

/// <summary>Reads JSON request bodies with source-generated metadata, turning every bad body into a problem.</summary>
internal static class JsonBody
{
    public static async Task<(T? Value, IResult? Error)> ReadAsync<T>(HttpRequest request, JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken)
        where T : class
    {
        if (!request.HasJsonContentType())
        {
            return (null, Problems.Of(StatusCodes.Status415UnsupportedMediaType, ProblemTypes.UnsupportedMediaType,
                "Unsupported media type", "The body must be JSON (Content-Type: application/json)."));
        }

        try
        {
            var value = await JsonSerializer.DeserializeAsync(request.Body, typeInfo, cancellationToken);
            return value is null
                ? (null, Problems.Of(StatusCodes.Status400BadRequest, ProblemTypes.MalformedJson, "Malformed JSON", "The body must be a JSON object, not null."))
                : (value, null);
        }
        catch (JsonException e)
        {
            // The path and position help the caller; the message holds no secrets.
            var where = e.Path is null ? "" : $" at {e.Path}";
            return (null, Problems.Of(StatusCodes.Status400BadRequest, ProblemTypes.MalformedJson, "Malformed JSON", $"The body is not valid JSON for this endpoint{where}."));
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return (null, Problems.Of(StatusCodes.Status413PayloadTooLarge, ProblemTypes.PayloadTooLarge, "Payload too large", "The body is larger than 1 MiB."));
        }
    }
}

/// <summary>Route handler helpers.</summary>
internal static class Endpoints
{
    /// <summary>
    /// Typed as a Func, a handler binds as a route handler whose IResult is written; a lambda taking
    /// only HttpContext would bind as a RequestDelegate and silently drop its result.
    /// </summary>
    public static Delegate Handler(Func<HttpContext, Task<IResult>> handler) => handler;
}
