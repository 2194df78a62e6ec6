using Treaty.Core.Contracts;

namespace Treaty.Client;

/// <summary>
/// The coordinator answered with an error response (problem+json): a validation error (400), an
/// unknown transaction (404), a conflict (409), or a server-side failure (5xx).
/// </summary>
/// <remarks>
/// Connection failures and timeouts are not API answers: they surface as
/// <see cref="HttpRequestException"/> or <see cref="TaskCanceledException"/>, because the request's
/// outcome is unknown.
/// </remarks>
public sealed class TreatyApiException : Exception
{
    /// <summary>Creates the exception for a response with <paramref name="statusCode"/> and its problem body.</summary>
    /// <param name="statusCode">The HTTP status code of the response.</param>
    /// <param name="problem">The problem details of the response (synthesized when the body had none).</param>
    public TreatyApiException(int statusCode, ProblemView problem)
        : base(FormatMessage(statusCode, problem))
    {
        ArgumentNullException.ThrowIfNull(problem);
        StatusCode = statusCode;
        Problem = problem;
    }

    /// <summary>The HTTP status code of the response.</summary>
    public int StatusCode { get; }

    /// <summary>The problem details as the coordinator sent them.</summary>
    public ProblemView Problem { get; }

    /// <summary>The stable problem type URI (see <see cref="ProblemTypes"/>), or <c>about:blank</c>.</summary>
    public string Type => Problem.Type;

    /// <summary>A short, human-readable summary of the problem type.</summary>
    public string Title => Problem.Title;

    /// <summary>An explanation specific to this occurrence, if any.</summary>
    public string? Detail => Problem.Detail;

    /// <summary>The offending fields and what is wrong with each (validation errors), if any.</summary>
    public IReadOnlyDictionary<string, string[]>? Errors => Problem.Errors;

    /// <summary>
    /// True when the same request may succeed later (408, 425, 429, 5xx): the coordinator was
    /// overloaded or failed; false for a definitive answer about the request itself.
    /// </summary>
    public bool IsTransient => StatusCode is 408 or 425 or 429 or >= 500;

    private static string FormatMessage(int statusCode, ProblemView? problem)
    {
        if (problem is null)
        {
            return $"The coordinator answered {statusCode}.";
        }

        var message = $"The coordinator answered {statusCode} {problem.Title}";
        if (!string.IsNullOrEmpty(problem.Detail))
        {
            message += ": " + problem.Detail;
        }

        if (problem.Errors is { Count: > 0 } errors)
        {
            message += " (" + string.Join("; ", errors.Select(e => $"{e.Key}: {string.Join(" ", e.Value)}")) + ")";
        }

        return message;
    }
}
