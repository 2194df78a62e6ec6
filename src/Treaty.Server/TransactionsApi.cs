using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Http.Features;
using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Serialization;
using Treaty.Server.Security;

namespace Treaty.Server;

/// <summary>The <c>/api/v1</c> endpoints.</summary>
public static class TransactionsApi
{
    /// <summary>Maps the transaction API onto <paramref name="endpoints"/>.</summary>
    public static IEndpointRouteBuilder MapTreatyApi(this IEndpointRouteBuilder endpoints)
    {
        // One /api/v1 group holds every endpoint, so a convention (an auth policy) added to v1 reaches
        // the counts too; the counts live beside the transactions, not under them (a gid may be any word).
        var v1 = endpoints.MapGroup("/api/v1").WithTags("Transactions").RequireTreatyClient();
        v1.MapGet("/transaction-counts", CountAsync)
            .WithName("CountTransactions")
            .WithSummary("Transactions by status, with the listing's filters (all but status)")
            .Produces<TransactionCountsView>()
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json");
        v1.MapGet("/instances", ListInstancesAsync)
            .WithName("ListInstances")
            .WithSummary("The coordinator instances holding unfinished transactions: how many each holds, and whether its leases ran out")
            .Produces<InstanceListView>()
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json");
        v1.MapPost("/choreography/events", ReportEventsAsync)
            .WithName("ReportChoreographyEvents")
            .WithSummary("Report events of choreographed sagas (one event, or { events: [...] }); the first event of a gid creates it")
            .Produces<ChoreographyReportView>()
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status413PayloadTooLarge, "application/problem+json");
        var api = v1.MapGroup("/transactions");
        api.MapPost("", SubmitAsync)
            .WithName("SubmitTransaction")
            .WithSummary("Submit a transaction (idempotent on gid)")
            .Accepts<SubmitTransactionRequest>("application/json")
            .Produces<TransactionView>(StatusCodes.Status200OK)
            .Produces<TransactionView>(StatusCodes.Status202Accepted)
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status413PayloadTooLarge, "application/problem+json");
        api.MapGet("", ListAsync)
            .WithName("ListTransactions")
            .WithSummary("List transactions, newest first")
            .Produces<TransactionListView>()
            .Produces<ProblemView>(StatusCodes.Status400BadRequest, "application/problem+json");
        api.MapGet("/{gid}", GetAsync)
            .WithName("GetTransaction")
            .Produces<TransactionView>()
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json");
        api.MapGet("/{gid}/events", GetEventsAsync)
            .WithName("GetTransactionEvents")
            .WithSummary("The transaction's timeline: every attempt and decision")
            .Produces<EventListView>()
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json");
        api.MapPost("/{gid}/submit", SubmitPreparedAsync)
            .WithName("SubmitPreparedMessage")
            .WithSummary("Two-phase message: the sender committed its local transaction; deliver the registered message")
            .Produces<TransactionView>()
            .Produces<TransactionView>(StatusCodes.Status202Accepted)
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json");
        api.MapPost("/{gid}/retry", RetryAsync)
            .WithName("RetryTransaction")
            .RequireTreatyOperator()
            .WithSummary("Operator: retry waiting operations now")
            .Produces<TransactionView>()
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json");
        api.MapPost("/{gid}/abort", AbortAsync)
            .WithName("AbortTransaction")
            .RequireTreatyOperator()
            .WithSummary("Operator: abort (compensate) a transaction before its point of no return")
            .Produces<TransactionView>()
            .Produces<ProblemView>(StatusCodes.Status404NotFound, "application/problem+json")
            .Produces<ProblemView>(StatusCodes.Status409Conflict, "application/problem+json");
        return endpoints;
    }

    private static async Task<IResult> SubmitAsync(HttpContext context, TransactionEngine engine, TreatyServerOptions options, ParticipantAllowlist allowlist, CancellationToken cancellationToken)
    {
        if (!IsJson(context.Request.ContentType))
        {
            return Problems.Create(StatusCodes.Status415UnsupportedMediaType, ProblemTypes.UnsupportedMediaType,
                "Unsupported media type", "Send the transaction as application/json.", context);
        }

        if (BadWait(context, options, out var wait) is { } badWait)
        {
            return badWait;
        }

        SubmitTransactionRequest? request;
        try
        {
            request = await JsonSerializer.DeserializeAsync(context.Request.Body, TreatyJsonContext.Default.SubmitTransactionRequest, cancellationToken);
        }
        catch (JsonException ex)
        {
            var where = string.IsNullOrEmpty(ex.Path) || ex.Path == "$" ? "" : $" at {ex.Path}";
            return Problems.Create(StatusCodes.Status400BadRequest, ProblemTypes.MalformedJson, "Malformed JSON",
                $"The body is not a valid transaction{where}: {FirstSentence(ex.Message)}", context,
                new Dictionary<string, string[]> { [ex.Path ?? "$"] = [FirstSentence(ex.Message)] });
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return TooLarge(context, options);
        }

        if (request is null)
        {
            return Problems.Field(context, "$", "The body must be a JSON object.");
        }

        var parsedRequest = RequestParser.Parse(request, engine.MachineFor, NewGid);
        if (!parsedRequest.IsValid)
        {
            return Problems.Validation(context, parsedRequest.Errors,
                parsedRequest.UnsupportedProtocol ? ProblemTypes.UnsupportedProtocol : ProblemTypes.Validation);
        }

        using var activity = TreatyTelemetry.StartSubmit(parsedRequest.Spec!, CallerTrace(context));
        if (allowlist.Check(parsedRequest.Spec!) is { Count: > 0 } refused)
        {
            return Problems.Validation(context, refused, ProblemTypes.ParticipantNotAllowed);
        }

        var result = await engine.SubmitAsync(parsedRequest.Spec!, parsedRequest.Fingerprint!, cancellationToken);
        activity?.SetTag("treaty.submit.result", result.Status.ToString());
        if (result.Status == SubmitStatus.Conflict)
        {
            return Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.GidConflict, "Gid already used",
                $"A different transaction with gid '{result.State.Gid}' exists; the same gid must come with the same body.", context);
        }

        var state = result.State;
        if (wait is { } duration && duration > TimeSpan.Zero && !state.IsTerminal)
        {
            state = await engine.WaitAsync(state.Gid, duration, cancellationToken) ?? state;
        }

        var location = $"/api/v1/transactions/{Uri.EscapeDataString(state.Gid)}";
        context.Response.Headers.Location = location;
        return Results.Json(View(engine, state), TreatyJsonContext.Default.TransactionView,
            statusCode: state.IsTerminal ? StatusCodes.Status200OK : StatusCodes.Status202Accepted);
    }

    /// <summary>
    /// Records reported events of choreographed sagas. Every event is validated before any is
    /// stored; then each is recorded in order (a duplicate message id changes nothing).
    /// </summary>
    private static async Task<IResult> ReportEventsAsync(HttpContext context, TransactionEngine engine, TreatyServerOptions options, CancellationToken cancellationToken)
    {
        if (!IsJson(context.Request.ContentType))
        {
            return Problems.Create(StatusCodes.Status415UnsupportedMediaType, ProblemTypes.UnsupportedMediaType,
                "Unsupported media type", "Send the events as application/json.", context);
        }

        JsonElement body;
        try
        {
            body = await JsonSerializer.DeserializeAsync(context.Request.Body, TreatyJsonContext.Default.JsonElement, cancellationToken);
        }
        catch (JsonException ex)
        {
            return Problems.Create(StatusCodes.Status400BadRequest, ProblemTypes.MalformedJson, "Malformed JSON",
                $"The body is not valid JSON: {FirstSentence(ex.Message)}", context,
                new Dictionary<string, string[]> { [ex.Path ?? "$"] = [FirstSentence(ex.Message)] });
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return TooLarge(context, options);
        }

        var parsed = ChoreographyEventParser.Parse(body, options.TimelineBodyBytes);
        if (!parsed.IsValid)
        {
            return Problems.Validation(context, parsed.Errors);
        }

        var recorded = await ChoreographyReports.RecordAsync(engine, parsed.Events, cancellationToken);
        var conflicts = new List<ValidationError>();
        for (var i = 0; i < recorded.Count; i++)
        {
            var (reported, result, _) = recorded[i];
            if (recorded[i].IsConflict)
            {
                var field = parsed.Events.Count == 1 && !body.TryGetProperty("events", out _) ? "correlationId" : $"events[{i}].correlationId";
                conflicts.Add(new(field, result.Status == ReportStatus.OtherProtocol
                    ? $"Transaction '{reported.CorrelationId}' is a {result.State?.Spec.Protocol.ToWire()} transaction, not a choreography."
                    : $"Transaction '{reported.CorrelationId}' is busy; report the event again."));
            }
        }

        if (conflicts.Count > 0)
        {
            var errors = conflicts.GroupBy(c => c.Field).ToDictionary(g => g.Key, g => g.Select(c => c.Message).ToArray());
            return Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.GidConflict, "Gid already used",
                $"{conflicts.Count} of {parsed.Events.Count} events were not recorded; the others were.", context, errors);
        }

        return Results.Json(new ChoreographyReportView([.. recorded.Select(r => r.View)]), TreatyJsonContext.Default.ChoreographyReportView);
    }

    /// <summary>The caller's trace: the request's activity when the host made one, else its <c>traceparent</c>.</summary>
    private static System.Diagnostics.ActivityContext CallerTrace(HttpContext context)
    {
        if (System.Diagnostics.Activity.Current is { } current)
        {
            return current.Context;
        }

        return System.Diagnostics.ActivityContext.TryParse(context.Request.Headers.TraceParent, context.Request.Headers.TraceState, isRemote: true, out var parsed)
            ? parsed
            : default;
    }

    /// <summary>Reads <c>?wait=</c>; a problem to answer when it is not a duration within the limit.</summary>
    private static IResult? BadWait(HttpContext context, TreatyServerOptions options, out TimeSpan? wait)
    {
        wait = null;
        if (!context.Request.Query.TryGetValue("wait", out var text))
        {
            return null;
        }

        if (!TryParseDuration(text.ToString(), out var parsed) || parsed > options.MaxWait)
        {
            return Problems.Field(context, "wait", $"Use a duration such as 500ms, 5s or 1m, at most {options.MaxWait.TotalSeconds:0}s.");
        }

        wait = parsed;
        return null;
    }

    private static IResult TooLarge(HttpContext context, TreatyServerOptions options) =>
        Problems.Create(StatusCodes.Status413PayloadTooLarge, ProblemTypes.PayloadTooLarge, "Request body too large",
            $"The body exceeds {options.MaxRequestBodyBytes} bytes.", context);

    private static async Task<IResult> GetAsync(string gid, HttpContext context, TransactionEngine engine, CancellationToken cancellationToken)
    {
        var state = RequestParser.IsValidGid(gid) ? await engine.GetAsync(gid, cancellationToken) : null;
        return state is null
            ? Problems.NotFound(context, gid)
            : Results.Json(View(engine, state), TreatyJsonContext.Default.TransactionView);
    }

    private static async Task<IResult> GetEventsAsync(string gid, HttpContext context, TransactionEngine engine, ITransactionStore store, CancellationToken cancellationToken)
    {
        var state = RequestParser.IsValidGid(gid) ? await engine.GetAsync(gid, cancellationToken) : null;
        if (state is null)
        {
            return Problems.NotFound(context, gid);
        }

        var journal = await store.GetJournalAsync(gid, cancellationToken);
        return Results.Json(new EventListView(gid, [.. journal.Select(WireMapper.ToView)]), TreatyJsonContext.Default.EventListView);
    }

    private static async Task<IResult> ListAsync(HttpContext context, ITransactionStore store, CancellationToken cancellationToken)
    {
        var query = context.Request.Query;
        var errors = new List<ValidationError>();
        var filters = ParseFilters(query, errors);
        var limit = 50;
        if (query.TryGetValue("limit", out var limitText)
            && (!int.TryParse(limitText.ToString(), NumberStyles.None, CultureInfo.InvariantCulture, out limit) || limit is < 1 or > 500))
        {
            errors.Add(new("limit", "Use a number from 1 to 500."));
        }

        var cursor = query.TryGetValue("cursor", out var cursorText) ? cursorText.ToString() : null;
        if (cursor is { Length: > 512 })
        {
            errors.Add(new("cursor", "Not a cursor this server issued."));
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(context, errors);
        }

        TransactionPage page;
        try
        {
            page = await store.ListAsync(filters with { Limit = limit, Cursor = cursor }, cancellationToken);
        }
        catch (Exception ex) when (cursor is not null && ex is FormatException or ArgumentException)
        {
            // Stores reject a cursor they did not issue (the SQLite store with ArgumentException).
            return Problems.Field(context, "cursor", "Not a cursor this server issued.");
        }

        return Results.Json(new TransactionListView([.. page.Items.Select(WireMapper.ToSummary)], page.NextCursor), TreatyJsonContext.Default.TransactionListView);
    }

    private static async Task<IResult> CountAsync(HttpContext context, ITransactionStore store, CancellationToken cancellationToken)
    {
        var errors = new List<ValidationError>();
        var filters = ParseFilters(context.Request.Query, errors, allowStatus: false);
        if (errors.Count > 0)
        {
            return Problems.Validation(context, errors);
        }

        var counts = await store.CountAsync(filters, cancellationToken);
        var byStatus = counts.ByStatus.ToDictionary(pair => pair.Key.ToWire(), pair => pair.Value, StringComparer.Ordinal);
        return Results.Json(new TransactionCountsView(counts.Total, counts.Stuck, byStatus), TreatyJsonContext.Default.TransactionCountsView);
    }

    private static async Task<IResult> ListInstancesAsync(HttpContext context, TransactionEngine engine, ITransactionStore store, CancellationToken cancellationToken)
    {
        if (context.Request.Query.Count > 0)
        {
            // Nothing to filter by: a parameter would be ignored, and its sender believe it applied.
            return Problems.Validation(context, [.. context.Request.Query.Keys.Select(key => new ValidationError(key, "The instances take no query parameters."))]);
        }

        var holders = await store.ListHoldersAsync(cancellationToken);
        var instances = holders.Select(h => new InstanceView(h.Owner, h.Held, h.LeaseUntil, h.Expired)).ToList();
        return Results.Json(new InstanceListView(engine.Lease.Owner, instances), TreatyJsonContext.Default.InstanceListView);
    }

    /// <summary>The filters of the listing and the counts; each bad one adds an error naming its field.</summary>
    private static TransactionQuery ParseFilters(IQueryCollection query, List<ValidationError> errors, bool allowStatus = true)
    {
        TransactionStatus? status = null;
        if (query.TryGetValue("status", out var statusText))
        {
            if (!allowStatus)
            {
                errors.Add(new("status", "The counts are by status; filter by the other fields."));
            }
            else if (StatusExtensions.TryParseStatus(statusText.ToString(), out var s))
            {
                status = s;
            }
            else
            {
                errors.Add(new("status", "Use one of prepared, pending, running, aborting, committed, aborted."));
            }
        }

        Protocol? protocol = null;
        if (query.TryGetValue("protocol", out var protocolText))
        {
            if (ProtocolNames.TryParse(protocolText.ToString(), out var p))
            {
                protocol = p;
            }
            else
            {
                errors.Add(new("protocol", "Use one of saga, tcc, 2pc, 3pc, msg, choreography."));
            }
        }

        bool? stuck = null;
        if (query.TryGetValue("stuck", out var stuckText))
        {
            if (bool.TryParse(stuckText.ToString(), out var b))
            {
                stuck = b;
            }
            else
            {
                errors.Add(new("stuck", "Use true or false."));
            }
        }

        var since = ParseTime(query, "since", errors);
        var until = ParseTime(query, "until", errors);
        if (since is { } from && until is { } to && to < from)
        {
            errors.Add(new("until", "Must not be before since."));
        }

        string? gidContains = null;
        if (query.TryGetValue("gid", out var gidText) && gidText.ToString() is { Length: > 0 } gid)
        {
            // A piece of a gid is itself a valid gid: the same characters, no longer than one.
            if (RequestParser.IsValidGid(gid))
            {
                gidContains = gid;
            }
            else
            {
                errors.Add(new("gid", $"Search with 1 to {TreatyDefaults.MaxGidLength} characters of letters, digits, '-', '_', '.' and ':'."));
            }
        }

        return new TransactionQuery(status, protocol, stuck, since, Until: until, GidContains: gidContains);
    }

    private static DateTimeOffset? ParseTime(IQueryCollection query, string name, List<ValidationError> errors)
    {
        if (!query.TryGetValue(name, out var text))
        {
            return null;
        }

        if (DateTimeOffset.TryParse(text.ToString(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at))
        {
            return at;
        }

        errors.Add(new(name, "Use an ISO 8601 timestamp."));
        return null;
    }

    private static async Task<IResult> SubmitPreparedAsync(string gid, HttpContext context, TransactionEngine engine, TreatyServerOptions options, CancellationToken cancellationToken)
    {
        if (!RequestParser.IsValidGid(gid))
        {
            return Problems.NotFound(context, gid);
        }

        if (BadWait(context, options, out var wait) is { } badWait)
        {
            return badWait;
        }

        var result = await engine.SubmitPreparedAsync(gid, cancellationToken);
        var state = result.State;
        switch (result.Status)
        {
            case AdminStatus.NotFound:
                return Problems.NotFound(context, gid);
            case AdminStatus.Refused when state is null || state.Spec.Protocol != Protocol.Msg:
                return Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.InvalidState, "Not a message",
                    $"Transaction '{gid}' is a {state?.Spec.Protocol.ToWire()} transaction; only a two-phase message (msg) is submitted after registration.", context);
            case AdminStatus.Refused when state.Outcome != TransactionOutcome.Commit:
                return Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.InvalidState, "Message aborted",
                    $"Message '{gid}' is {state.Status.ToWire()}: {state.Reason ?? "it was aborted"}. It will not be delivered.", context);
        }

        // Accepted now, or submitted before (a repeated submit, or queryPrepared found the commit first).
        if (wait is { } duration && duration > TimeSpan.Zero && !state!.IsTerminal)
        {
            state = await engine.WaitAsync(gid, duration, cancellationToken) ?? state;
        }

        return Results.Json(View(engine, state!), TreatyJsonContext.Default.TransactionView,
            statusCode: state!.IsTerminal ? StatusCodes.Status200OK : StatusCodes.Status202Accepted);
    }

    private static async Task<IResult> RetryAsync(string gid, HttpContext context, TransactionEngine engine, CancellationToken cancellationToken)
    {
        if (!RequestParser.IsValidGid(gid))
        {
            return Problems.NotFound(context, gid);
        }

        var result = await engine.RetryAsync(gid, TreatyAuthorization.ActorOf(context), cancellationToken);
        return AdminResponse(context, engine, gid, result, "It is already finished.");
    }

    private static async Task<IResult> AbortAsync(string gid, HttpContext context, TransactionEngine engine, CancellationToken cancellationToken)
    {
        if (!RequestParser.IsValidGid(gid))
        {
            return Problems.NotFound(context, gid);
        }

        string? reason = null;
        if (context.Request.ContentLength is > 0 || context.Request.Headers.TransferEncoding.Count > 0)
        {
            try
            {
                var body = await JsonSerializer.DeserializeAsync(context.Request.Body, TreatyJsonContext.Default.AbortRequest, cancellationToken);
                reason = body?.Reason;
            }
            catch (JsonException ex)
            {
                return Problems.Create(StatusCodes.Status400BadRequest, ProblemTypes.MalformedJson, "Malformed JSON", FirstSentence(ex.Message), context);
            }
        }

        if (reason is { Length: > 500 })
        {
            return Problems.Field(context, "reason", "At most 500 characters.");
        }

        var result = await engine.AbortAsync(gid, TreatyAuthorization.ActorOf(context), reason, cancellationToken);
        return AdminResponse(context, engine, gid, result, "It is finished, or it has passed its point of no return (the pivot has started).");
    }

    private static TransactionView View(TransactionEngine engine, TransactionState state) =>
        WireMapper.ToView(state, engine.MachineFor(state.Spec.Protocol)
            ?? throw new InvalidOperationException($"Transaction {state.Gid} uses protocol {state.Spec.Protocol.ToWire()}, which this coordinator does not run."));

    private static IResult AdminResponse(HttpContext context, TransactionEngine engine, string gid, AdminResult result, string refusal) => result.Status switch
    {
        AdminStatus.NotFound => Problems.NotFound(context, gid),
        AdminStatus.Refused => Problems.Create(StatusCodes.Status409Conflict, ProblemTypes.InvalidState, "Not possible in this state",
            $"Transaction '{gid}' is {result.State?.Status.ToWire()}. {refusal}", context),
        _ => Results.Json(View(engine, result.State!), TreatyJsonContext.Default.TransactionView),
    };

    private static string NewGid() => Guid.CreateVersion7().ToString("N");

    private static bool IsJson(string? contentType) =>
        contentType is not null
        && (contentType.StartsWith("application/json", StringComparison.OrdinalIgnoreCase)
            || (contentType.StartsWith("application/", StringComparison.OrdinalIgnoreCase) && contentType.Contains("+json", StringComparison.OrdinalIgnoreCase)));

    private static string FirstSentence(string message)
    {
        var end = message.IndexOf(". ", StringComparison.Ordinal);
        return end > 0 ? message[..(end + 1)] : message;
    }

    /// <summary>Parses 250ms, 5s, 2m, or a plain number of seconds.</summary>
    internal static bool TryParseDuration(string text, out TimeSpan duration)
    {
        duration = default;
        text = text.Trim();
        double factorMs;
        if (text.EndsWith("ms", StringComparison.OrdinalIgnoreCase))
        {
            factorMs = 1;
            text = text[..^2];
        }
        else if (text.EndsWith('s') || text.EndsWith('S'))
        {
            factorMs = 1000;
            text = text[..^1];
        }
        else if (text.EndsWith('m') || text.EndsWith('M'))
        {
            factorMs = 60_000;
            text = text[..^1];
        }
        else
        {
            factorMs = 1000;
        }

        // double.TryParse accepts "NaN" whatever the styles, and TimeSpan throws on it: a 500 for a
        // bad query string. The range check is written so that NaN fails it.
        if (!double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value) || !(value is >= 0 and <= 86_400))
        {
            return false;
        }

        duration = TimeSpan.FromMilliseconds(value * factorMs);
        return true;
    }
}
