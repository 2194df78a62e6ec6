using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Serialization;

namespace Treaty.Server;

/// <summary>RFC 9457 problem+json results with Treaty's stable types.</summary>
internal static class Problems
{
    public static IResult Create(int status, string type, string title, string? detail, HttpContext? context = null, IReadOnlyDictionary<string, string[]>? errors = null) =>
        Results.Json(
            new ProblemView(type, title, status, detail, context?.Request.Path.Value, errors),
            TreatyJsonContext.Default.ProblemView,
            contentType: "application/problem+json",
            statusCode: status);

    public static IResult Validation(HttpContext context, IReadOnlyList<ValidationError> errors, string type = ProblemTypes.Validation)
    {
        var byField = errors
            .GroupBy(e => e.Field, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => g.Select(e => e.Message).ToArray(), StringComparer.Ordinal);
        var detail = string.Join(" ", errors.Select(e => $"{e.Field}: {e.Message}"));
        var title = type switch
        {
            ProblemTypes.UnsupportedProtocol => "Unsupported protocol",
            ProblemTypes.ParticipantNotAllowed => "Participant not allowed",
            _ => "The request is not valid",
        };
        return Create(StatusCodes.Status400BadRequest, type, title, detail, context, byField);
    }

    public static IResult Field(HttpContext context, string field, string message) =>
        Validation(context, [new ValidationError(field, message)]);

    public static IResult NotFound(HttpContext context, string gid) =>
        Create(StatusCodes.Status404NotFound, ProblemTypes.NotFound, "Transaction not found", $"No transaction has gid '{gid}'.", context);
}
