using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Retention;

/// <summary>Registers the participant's retention service.</summary>
public static class RetentionServiceCollectionExtensions
{
    /// <summary>
    /// Deletes barrier rows older than <see cref="ParticipantRetentionOptions.BarrierAge"/> from the
    /// registered <see cref="ParticipantDatabase"/>, every <see cref="ParticipantRetentionOptions.Interval"/>,
    /// in small batches with a pause between them (<see cref="ParticipantRetention.PurgeBarrierAsync"/>).
    /// Opt-in; the options are validated when the host starts.
    /// </summary>
    public static IServiceCollection AddTreatyRetention(this IServiceCollection services, Action<ParticipantRetentionOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.TryAddSingleton(TimeProvider.System);
        services.AddOptions<ParticipantRetentionOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ParticipantRetentionOptions>, ParticipantRetentionOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, ParticipantRetentionService>());
        return services;
    }
}

internal sealed class ParticipantRetentionOptionsValidator : IValidateOptions<ParticipantRetentionOptions>
{
    public ValidateOptionsResult Validate(string? name, ParticipantRetentionOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}

/// <summary>Runs <see cref="ParticipantRetention.PurgeBarrierAsync"/> periodically, batch by batch.</summary>
internal sealed partial class ParticipantRetentionService(
    ParticipantDatabase database,
    IOptions<ParticipantRetentionOptions> options,
    TimeProvider time,
    ILogger<ParticipantRetentionService> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var settings = options.Value;
        var age = settings.BarrierAge ?? throw new InvalidOperationException("BarrierAge is required.");
        try
        {
            using var timer = new PeriodicTimer(settings.Interval, time);
            do
            {
                try
                {
                    await PurgeAsync(time.GetUtcNow() - age, settings, stoppingToken);
                }
                catch (Exception exception) when (exception is not OperationCanceledException)
                {
                    LogPurgeFailed(logger, exception);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // stopping
        }
    }

    private async Task PurgeAsync(DateTimeOffset cutoff, ParticipantRetentionOptions settings, CancellationToken cancellationToken)
    {
        long total = 0;
        while (true)
        {
            var deleted = await ParticipantRetention.PurgeBarrierAsync(database, cutoff, settings.BatchSize, cancellationToken);
            total += deleted;
            // Rows, not branches: a batch of N candidate rows may delete a few more (a branch's other ops).
            if (deleted == 0)
            {
                break;
            }

            await Task.Delay(settings.Pause, time, cancellationToken);
        }

        if (total > 0)
        {
            LogPurged(logger, total, cutoff);
        }
    }

    [LoggerMessage(EventId = 4161, Level = LogLevel.Information, Message = "Retention deleted {Count} barrier rows recorded before {Cutoff:O}")]
    private static partial void LogPurged(ILogger logger, long count, DateTimeOffset cutoff);

    [LoggerMessage(EventId = 4162, Level = LogLevel.Warning, Message = "Retention pass failed; the next pass tries again")]
    private static partial void LogPurgeFailed(ILogger logger, Exception exception);
}
