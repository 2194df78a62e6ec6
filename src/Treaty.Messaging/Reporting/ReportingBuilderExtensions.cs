using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>Reports a choreographed saga's events to the coordinator, from the outbox.</summary>
public static class ReportingBuilderExtensions
{
    /// <summary>
    /// Every event this service publishes through the <see cref="Outbox"/> is reported to the
    /// coordinator at <paramref name="coordinator"/> (<c>POST /api/v1/choreography/events</c>,
    /// correlation id = the saga's gid), so each choreographed saga shows there as a transaction with
    /// its timeline, and is flagged stuck when its next event does not come. The report row is written
    /// in the publisher's transaction with the outbox row and sent after the commit, with backoff
    /// until the coordinator answered; the coordinator being down delays the timeline, never the events.
    /// The publisher states an event's outcome and the next event's timeout per type here
    /// (<see cref="ChoreographyReportingOptions.Outcome"/>) or per event (<see cref="PublishOptions"/>).
    /// </summary>
    /// <param name="builder">The messaging builder (<c>AddTreatyMessaging</c>).</param>
    /// <param name="coordinator">The coordinator, e.g. <c>http://127.0.0.1:5000</c>.</param>
    /// <param name="apiKey">A client key of the coordinator (<c>--api-key</c>); null when it requires none.</param>
    /// <param name="configure">Outcomes per type, timeouts, batch size and backoff.</param>
    public static TreatyMessagingBuilder ReportTo(this TreatyMessagingBuilder builder, Uri coordinator, string? apiKey = null, Action<ChoreographyReportingOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(coordinator);
        if (!coordinator.IsAbsoluteUri)
        {
            throw new ArgumentException("The coordinator's absolute URL, e.g. http://127.0.0.1:5000.", nameof(coordinator));
        }

        if (builder.Services.Any(d => d.ServiceType == typeof(ReportWriter)))
        {
            throw new InvalidOperationException("ReportTo was called already: a service reports to one coordinator.");
        }

        var options = new ChoreographyReportingOptions();
        configure?.Invoke(options);
        options.Validate();

        var services = builder.Services;
        services.AddSingleton(provider =>
        {
            var messaging = provider.GetRequiredService<MessagingOptions>();
            var time = provider.GetRequiredService<TimeProvider>();
            var http = new HttpClient { BaseAddress = coordinator, Timeout = options.RequestTimeout };
            if (!string.IsNullOrEmpty(apiKey))
            {
                http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
            }

            return new ChoreographyReporter(
                messaging.Database ?? provider.GetRequiredService<ParticipantDatabase>(),
                new HttpReportChannel(http, time),
                options,
                time,
                provider.GetService<ILogger<ChoreographyReporter>>() ?? NullLogger<ChoreographyReporter>.Instance);
        });
        services.AddSingleton(provider => new ReportWriter(
            provider.GetRequiredService<MessagingOptions>().ServiceName, options, provider.GetRequiredService<ChoreographyReporter>().Nudge));
        // After AddTreatyMessaging's starter, which creates the reports table with the others.
        services.AddSingleton<IHostedService>(provider => provider.GetRequiredService<ChoreographyReporter>());
        return builder;
    }
}
