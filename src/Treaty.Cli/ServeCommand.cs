using System.CommandLine;
using Treaty.Server;

namespace Treaty.Cli;

/// <summary><c>treaty serve</c>: runs a coordinator.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var urls = new Option<string>("--urls") { Description = "Where to listen", DefaultValueFactory = _ => TreatyServerDefaults.Urls };
        var dataDir = new Option<string>("--data-dir") { Description = "Directory of the SQLite database", DefaultValueFactory = _ => TreatyServerDefaults.DataDir };
        var command = new Command("serve", "Run the coordinator (HTTP API, engine, recovery) on the embedded SQLite store") { urls, dataDir };
        command.SetAction(async (parse, cancellationToken) =>
        {
            var options = new TreatyServerOptions { Urls = parse.GetValue(urls)!, DataDir = parse.GetValue(dataDir)! };
            try
            {
                options.Validate();
            }
            catch (ArgumentException ex)
            {
                await Console.Error.WriteLineAsync(ex.Message);
                return 2;
            }

            await using var app = TreatyServer.CreateApp(options);
            await app.RunAsync(cancellationToken);
            return 0;
        });
        return command;
    }
}
