using System.Globalization;
using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Serialization;
using Treaty.Server.Security;

namespace Treaty.Server.DeadLetters;

/// <summary>
/// <c>/api/v1/dead-letters</c>: the dead letters of the services named by <c>--dead-letter-source</c>,
/// read from each service on every request (they live in the services' own databases), and the
/// operator's replay. Operators only: a dead letter's error and ids are operations data.
/// </summary>
internal static partial class DeadLettersApi
{
    /// <summary>The problem type of a source that did not answer a replay.</summary>
    public const string SourceUnavailable = "https://treaty.dev/problems/dead-letter-source-unavailable";

    private static readonly string[] Statuses = ["dead", "replaying", "replayed"];

    // A page of dead letters asks the store about each distinct gid; more than this stays unlinked.
    private const int MaxLinkedGids = 500;

    public static IEndpointRouteBuilder MapTreatyDeadLetterApi(this IEndpointRouteBuilder endpoints)
    {
        var group = endpoints.MapGroup("/api/v1/dead-letters").WithTags("Dead letters").RequireTreatyOperator();
        group.MapGet("", ListAsync)
            .WithName("ListDeadLetters")
            .WithSummary("Operator: the dead letters of every --dead-letter-source, with each source's reachability (?source=, ?status=dead|replaying|replayed)")
            .Produces<DeadLetterListView>()
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json");
        group.MapPost("/{source}/{id}/replay", ReplayAsync)
            .WithName("ReplayDeadLetter")
            .WithSummary("Operator: put a dead letter back for delivery in its service (audited)")
            .Produces<DeadLetterReplayView>()
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status502BadGateway, "application/problem+json");
        return endpoints;
    }

    private static async Task<IResult> ListAsync(HttpContext context, DeadLetterSourceClient client, ITransactionStore store, CancellationToken cancellationToken)
    {
        var errors = new List<ValidationError>();
        string? sourceFilter = null;
        string? statusFilter = null;
        foreach (var (key, values) in context.Request.Query)
        {
            var value = values.ToString();
            switch (key)
            {
                case "source" when client.Find(value) is { } found:
                    sourceFilter = found.Name;
                    break;
                case "source":
                    errors.Add(new("source", $"No dead-letter source is named '{Clip(value)}'; the sources are: {string.Join(", ", client.Sources.Select(s => s.Name))}."));
                    break;
                case "status" when Statuses.Contains(value, StringComparer.Ordinal):
                    statusFilter = value;
                    break;
                case "status":
                    errors.Add(new("status", "Use one of dead, replaying, replayed."));
                    break;
                default:
                    errors.Add(new(Clip(key), "Unknown parameter; this listing takes source and status."));
                    break;
            }
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(context, errors);
        }

        var listings = await client.ListAllAsync(cancellationToken);
        var sources = new List<DeadLetterSourceView>();
        var letters = new List<(string Source, ServiceDeadLetter Letter)>();
        foreach (var listing in listings.Where(l => sourceFilter is null || l.Source.Name == sourceFilter))
        {
            var kept = (listing.Letters ?? []).Where(l => statusFilter is null || l.Status == statusFilter).ToList();
            sources.Add(new(listing.Source.Name, listing.Source.BaseUrl.ToString(), listing.Error is null, listing.Error, kept.Count));
            letters.AddRange(kept.Select(l => (listing.Source.Name, l)));
        }

        var known = new HashSet<string>(StringComparer.Ordinal);
        foreach (var gid in letters.Select(l => l.Letter.CorrelationId).Where(RequestParser.IsValidGid).Distinct(StringComparer.Ordinal).Take(MaxLinkedGids))
        {
            if (await store.GetAsync(gid, cancellationToken) is not null)
            {
                known.Add(gid);
            }
        }

        var views = letters
            .OrderByDescending(l => l.Letter.DeadLetteredAt).ThenBy(l => l.Source, StringComparer.Ordinal).ThenByDescending(l => l.Letter.Id)
            .Select(l => new DeadLetterView(l.Source, l.Letter.Id, l.Letter.MessageId, l.Letter.Type, l.Letter.CorrelationId,
                known.Contains(l.Letter.CorrelationId), l.Letter.Source, l.Letter.Consumer, l.Letter.Error, l.Letter.CreatedAt,
                l.Letter.DeadLetteredAt, l.Letter.Status, l.Letter.ReplayedAt, l.Letter.Attempts ?? []))
            .ToList();
        return Results.Json(new DeadLetterListView(sources, views), DeadLetterJsonContext.Default.DeadLetterListView);
    }

    private static async Task<IResult> ReplayAsync(string source, string id, HttpContext context, DeadLetterSourceClient client, ILogger<DeadLetterSourceClient> logger, CancellationToken cancellationToken)
    {
        if (client.Find(source) is not { } found)
        {
            return Problems.Create(StatusCodes.Status404NotFound, ProblemTypes.NotFound, "Dead-letter source not found",
                $"No dead-letter source is named '{Clip(source)}' (see --dead-letter-source).", context);
        }

        if (!long.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
        {
            return Problems.Create(StatusCodes.Status404NotFound, ProblemTypes.NotFound, "Dead letter not found",
                $"'{found.Name}' has no dead letter '{Clip(id)}'; ids are whole numbers.", context);
        }

        var actor = TreatyAuthorization.ActorOf(context);
        var (outcome, detail) = await client.ReplayAsync(found, number, actor, cancellationToken);
        LogReplay(logger, actor, number, found.Name, outcome.ToString());
        return outcome switch
        {
            ReplayOutcome.Replaying => Results.Json(new DeadLetterReplayView(found.Name, number, "replaying"), DeadLetterJsonContext.Default.DeadLetterReplayView),
            ReplayOutcome.NotFound => Problems.Create(StatusCodes.Status404NotFound, ProblemTypes.NotFound, "Dead letter not found", detail, context),
            ReplayOutcome.Conflict => Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.InvalidState, "Not possible in this state", detail, context),
            _ => Problems.Create(StatusCodes.Status502BadGateway, SourceUnavailable, "Dead-letter source unavailable", detail, context),
        };
    }

    private static string Clip(string text) => text.Length <= 100 ? text : text[..100] + "…";

    [LoggerMessage(EventId = 3141, Level = LogLevel.Information, Message = "Operator {Actor} asked to replay dead letter {Id} of {Source}: {Result}")]
    private static partial void LogReplay(ILogger logger, string actor, long id, string source, string result);
}
